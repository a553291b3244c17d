namespace Microsoft.ML.BootMae;

/// <summary>
/// A batch of decoded images handed to the engine: pixels as float32 in [0, 1], planar [B, C, H, W]
/// (C, H and W are the architecture's), plus optional labels.
/// </summary>
/// <param name="Pixels">B·C·H·W values; the array may be longer than needed (pooled), only the first B·C·H·W are read.</param>
/// <param name="Count">Number of images B in this batch.</param>
/// <param name="Labels">0-based class indices, or null when unlabeled.</param>
public sealed record ImageBatch(float[] Pixels, int Count, int[]? Labels);

/// <summary>
/// The engine's view of a dataset: the ML.NET layer implements it over an IDataView cursor (decoding and
/// augmentation off the training thread); tests and benchmarks implement it over in-memory arrays.
/// The engine creates every tensor on its own thread.
/// </summary>
public interface IImageBatchSource
{
    /// <summary>Number of images per epoch when known (drives step counts, schedules and ETA).</summary>
    long? Count { get; }

    /// <summary>Reads one epoch in batches of at most <paramref name="batchSize"/> images.</summary>
    /// <param name="epoch">0-based epoch, so a source can reshuffle and re-augment deterministically per epoch.</param>
    /// <param name="batchSize">Maximum images per batch.</param>
    /// <param name="cancellationToken">Stops reading early.</param>
    IEnumerable<ImageBatch> ReadEpoch(int epoch, int batchSize, CancellationToken cancellationToken);
}
