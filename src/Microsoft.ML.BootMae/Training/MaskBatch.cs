using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Training;

// Masks for one batch. IdsShuffle B×N lists the visible patches first (NumKeep of them), then the masked ones;
// IdsRestore = argsort(IdsShuffle); Mask B×N is 1 for masked patches. HostIdsShuffle is the same data in .NET
// (row-major) for CPU-side sampling (teacher subsets) without a device read.
internal sealed class MaskBatch : IDisposable
{
    public MaskBatch(Tensor idsShuffle, Tensor idsRestore, Tensor mask, int numKeep, long[] hostIdsShuffle)
    {
        IdsShuffle = idsShuffle;
        IdsRestore = idsRestore;
        Mask = mask;
        NumKeep = numKeep;
        HostIdsShuffle = hostIdsShuffle;
        IdsKeep = idsShuffle[.., ..numKeep];
        IdsMasked = idsShuffle[.., numKeep..];
    }

    public Tensor IdsShuffle { get; }

    public Tensor IdsRestore { get; }

    public Tensor Mask { get; }

    public Tensor IdsKeep { get; }

    public Tensor IdsMasked { get; }

    public int NumKeep { get; }

    public long[] HostIdsShuffle { get; }

    public int BatchSize => (int)IdsShuffle.shape[0];

    public int NumPatches => (int)IdsShuffle.shape[1];

    public int NumMasked => NumPatches - NumKeep;

    // Builds a batch from explicit shuffle orders (row-major B×N, visible first), e.g. masks fixed by a fixture.
    public static MaskBatch FromShuffle(long[] idsShuffle, int batchSize, int numPatches, int numKeep, Device? device = null)
    {
        var restore = new long[idsShuffle.Length];
        var mask = new float[idsShuffle.Length];
        for (int b = 0; b < batchSize; b++)
        {
            int row = b * numPatches;
            for (int pos = 0; pos < numPatches; pos++)
            {
                long patch = idsShuffle[row + pos];
                restore[row + patch] = pos;
                mask[row + patch] = pos >= numKeep ? 1f : 0f;
            }
        }

        var shape = new long[] { batchSize, numPatches };
        return new MaskBatch(
            tensor(idsShuffle, shape, device: device),
            tensor(restore, shape, device: device),
            tensor(mask, shape, device: device),
            numKeep,
            idsShuffle);
    }

    // cls + a random subset of each sample's masked patches for the teacher (paper Table 5): B×count patch ids.
    public Tensor SampleMaskedSubset(int count, Random random)
    {
        int k = NumMasked;
        count = Math.Clamp(count, 1, k);
        var ids = new long[BatchSize * count];
        var pool = new long[k];
        for (int b = 0; b < BatchSize; b++)
        {
            Array.Copy(HostIdsShuffle, (b * NumPatches) + NumKeep, pool, 0, k);
            for (int i = 0; i < count; i++)
            {
                int j = random.Next(i, k);
                (pool[i], pool[j]) = (pool[j], pool[i]);
                ids[(b * count) + i] = pool[i];
            }
        }

        return tensor(ids, new long[] { BatchSize, count }, device: IdsShuffle.device);
    }

    public void Dispose()
    {
        IdsKeep.Dispose();
        IdsMasked.Dispose();
        IdsShuffle.Dispose();
        IdsRestore.Dispose();
        Mask.Dispose();
    }
}
