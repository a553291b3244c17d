namespace Microsoft.ML.BootMae.Training;

/// <summary>
/// An <see cref="IImageBatchSource"/> over images already in memory (tests, benchmarks, samples). With
/// <c>shuffle</c>, every epoch gets its own permutation drawn from <c>seed</c> and the epoch number, so runs repeat.
/// </summary>
internal sealed class InMemoryImageSource : IImageBatchSource
{
    private readonly float[] _pixels;
    private readonly int[]? _labels;
    private readonly int _count;
    private readonly int _imageLength;
    private readonly int _seed;
    private readonly bool _shuffle;

    /// <param name="pixels">count × channels × imageSize × imageSize floats in [0, 1], planar per image.</param>
    /// <param name="labels">0-based labels, one per image, or null for unlabeled data.</param>
    /// <param name="count">Number of images.</param>
    /// <param name="channels">Channels per image.</param>
    /// <param name="imageSize">Side of the square images.</param>
    /// <param name="seed">Seeds the per-epoch permutations.</param>
    /// <param name="shuffle">Reshuffle every epoch; false keeps the given order.</param>
    public InMemoryImageSource(float[] pixels, int[]? labels, int count, int channels, int imageSize, int seed, bool shuffle)
    {
        ArgumentNullException.ThrowIfNull(pixels);
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        _imageLength = checked(channels * imageSize * imageSize);
        if (pixels.Length < (long)count * _imageLength)
        {
            throw new ArgumentException($"{count} images of {channels}×{imageSize}×{imageSize} need {(long)count * _imageLength} floats, but pixels has {pixels.Length}.", nameof(pixels));
        }

        if (labels is not null && labels.Length < count)
        {
            throw new ArgumentException($"{count} images need {count} labels, but labels has {labels.Length}.", nameof(labels));
        }

        _pixels = pixels;
        _labels = labels;
        _count = count;
        _seed = seed;
        _shuffle = shuffle;
    }

    /// <inheritdoc />
    public long? Count => _count;

    /// <inheritdoc />
    public IEnumerable<ImageBatch> ReadEpoch(int epoch, int batchSize, CancellationToken cancellationToken)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(batchSize, 1);
        var order = Enumerable.Range(0, _count).ToArray();
        if (_shuffle)
        {
            // Not HashCode.Combine: it is randomised per process, and runs must repeat across processes.
            new Random(unchecked((_seed * 1_000_003) + epoch)).Shuffle(order);
        }

        for (int start = 0; start < _count; start += batchSize)
        {
            cancellationToken.ThrowIfCancellationRequested();
            int b = Math.Min(batchSize, _count - start);
            var pixels = new float[b * _imageLength];
            var labels = _labels is null ? null : new int[b];
            for (int i = 0; i < b; i++)
            {
                int source = order[start + i];
                Array.Copy(_pixels, (long)source * _imageLength, pixels, (long)i * _imageLength, _imageLength);
                if (labels is not null)
                {
                    labels[i] = _labels![source];
                }
            }

            yield return new ImageBatch(pixels, b, labels);
        }
    }
}
