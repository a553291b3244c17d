namespace Microsoft.ML.BootMae.Training;

/// <summary>
/// Deterministic seed derivation. Every random draw of a run (shuffling, augmentation, masks, teacher subsets) comes
/// from a generator seeded with (run seed, epoch or step), so a resumed run reproduces the straight run exactly
/// without serialising generator state. <see cref="HashCode"/> is not used: it is randomised per process.
/// </summary>
internal static class Seeds
{
    /// <summary>SplitMix64 of the pair, folded to a non-negative int.</summary>
    public static int Derive(int seed, long index, int stream = 0)
    {
        ulong z = unchecked((ulong)seed * 0x9E3779B97F4A7C15UL + (ulong)index * 0xBF58476D1CE4E5B9UL + (ulong)stream * 0x94D049BB133111EBUL + 0x632BE59BD9B4E019UL);
        z = unchecked((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL);
        z = unchecked((z ^ (z >> 27)) * 0x94D049BB133111EBUL);
        z ^= z >> 31;
        return (int)(z & 0x7FFFFFFF);
    }
}
