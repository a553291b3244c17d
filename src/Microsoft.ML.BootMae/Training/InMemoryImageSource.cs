namespace Microsoft.ML.BootMae.Training;

/// <summary>
/// An <see cref="IImageBatchSource"/> over images already in memory ([count, C, H, W] floats in [0, 1]), shuffled
/// per epoch from a seed so that a run, and a resumed run, see the same order. Used by tests and benchmarks.
/// </summary>
internal sealed class InMemoryImageSource : IImageBatchSource
{
    private readonly float[] _pixels;
    private readonly int[]? _labels;
    private readonly int _count;
    private readonly int _imageLength;
    private readonly int _seed;
    private readonly bool _shuffle;

    public InMemoryImageSource(float[] pixels, int[]? labels, int count, int channels, int imageSize, int seed, bool shuffle)
    {
        _imageLength = channels * imageSize * imageSize;
        if (count <= 0 || pixels.Length < (long)count * _imageLength)
        {
            throw new ArgumentException($"Expected {count} images of {channels}×{imageSize}×{imageSize} floats, got {pixels.Length} values.", nameof(pixels));
        }

        if (labels is not null && labels.Length < count)
        {
            throw new ArgumentException($"Expected {count} labels, got {labels.Length}.", nameof(labels));
        }

        _pixels = pixels;
        _labels = labels;
        _count = count;
        _seed = seed;
        _shuffle = shuffle;
    }

    public long? Count => _count;

    public IEnumerable<ImageBatch> ReadEpoch(int epoch, int batchSize, CancellationToken cancellationToken)
    {
        var order = Enumerable.Range(0, _count).ToArray();
        if (_shuffle)
        {
            new Random(Seeds.Derive(_seed, epoch)).Shuffle(order);
        }

        for (int start = 0; start < _count; start += batchSize)
        {
            cancellationToken.ThrowIfCancellationRequested();
            int n = Math.Min(batchSize, _count - start);
            var pixels = new float[n * _imageLength];
            var labels = _labels is null ? null : new int[n];
            for (int i = 0; i < n; i++)
            {
                int index = order[start + i];
                Array.Copy(_pixels, (long)index * _imageLength, pixels, (long)i * _imageLength, _imageLength);
                if (labels is not null)
                {
                    labels[i] = _labels![index];
                }
            }

            yield return new ImageBatch(pixels, n, labels);
        }
    }
}
