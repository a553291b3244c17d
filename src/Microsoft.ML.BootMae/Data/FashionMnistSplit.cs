namespace Microsoft.ML.BootMae;

/// <summary>
/// One split (train or test) of the embedded Fashion-MNIST subset as raw arrays, for benchmarks and code that
/// does not want files. Every call to <see cref="FashionMnistSample.LoadArrays"/> returns fresh arrays, so callers
/// may modify them.
/// </summary>
public sealed class FashionMnistSplit
{
    internal FashionMnistSplit(byte[] pixels, byte[] labels, int[] indices, int[] sourceIndices)
    {
        Pixels = pixels;
        Labels = labels;
        Indices = indices;
        SourceIndices = sourceIndices;
    }

    /// <summary>Number of images.</summary>
    public int Count => Labels.Length;

    /// <summary>Image height in pixels (28).</summary>
    public int Height => FashionMnistSample.ImageSize;

    /// <summary>Image width in pixels (28).</summary>
    public int Width => FashionMnistSample.ImageSize;

    /// <summary>
    /// Grey levels, <see cref="Count"/> × 28 × 28 bytes, image after image, row-major; 0 is the black background
    /// and 255 full ink, exactly as in Fashion-MNIST.
    /// </summary>
    public byte[] Pixels { get; }

    /// <summary>Class index (0..9) of each image; <see cref="FashionMnistSample.ClassNames"/> names them.</summary>
    public byte[] Labels { get; }

    /// <summary>
    /// Position of each image in the full embedded split (10,000 train or 2,000 test images). It is also the number
    /// in the image's file name written by <see cref="FashionMnistSample.Materialize"/>, so it identifies an image
    /// across subsets.
    /// </summary>
    public int[] Indices { get; }

    /// <summary>Position of each image in its original Fashion-MNIST file (train-* or t10k-*), for provenance.</summary>
    public int[] SourceIndices { get; }

    /// <summary>Copies image <paramref name="index"/> into a new 1 × 28 × 28 (CHW) array of values in [0, 1].</summary>
    /// <param name="index">Image position in this split, 0 ≤ index &lt; <see cref="Count"/>.</param>
    /// <returns>The image as floats, pixel / 255.</returns>
    public float[] GetImage(int index)
    {
        if ((uint)index >= (uint)Count)
        {
            throw new ArgumentOutOfRangeException(nameof(index), index, $"index must be in [0, {Count}).");
        }

        const int size = FashionMnistSample.ImageSize * FashionMnistSample.ImageSize;
        var image = new float[size];
        var source = Pixels.AsSpan(index * size, size);
        for (var i = 0; i < size; i++)
        {
            image[i] = source[i] / 255f;
        }

        return image;
    }
}
