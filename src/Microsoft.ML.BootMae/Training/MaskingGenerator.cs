using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Training;

// Per-sample masks (spec §3, scaled per §7.1). Everything is computed in .NET from a seeded System.Random and turned into
// one tensor per output, so it is deterministic and makes no per-element native calls.
internal sealed class MaskingGenerator
{
    private const double MinAspect = 0.3;
    private readonly Random random;
    private readonly double logAspectMin = Math.Log(MinAspect);
    private readonly double logAspectMax = Math.Log(1 / MinAspect);

    public MaskingGenerator(int gridSize, BootMaeMasking strategy, int seed, double maskRatio = 0.75, int? jitter = null, int maxTries = 100)
    {
        if (gridSize < 2)
        {
            throw new ArgumentOutOfRangeException(nameof(gridSize), "The patch grid must be at least 2×2.");
        }

        GridSize = gridSize;
        Strategy = strategy;
        int n = NumPatches;
        NumMasked = n - (int)((1 - maskRatio) * n);
        double scale = n / 196.0;
        BlockTarget = Math.Min(NumMasked, (int)Math.Round(120 * scale));
        MinBlockPatches = Math.Max(1, (int)Math.Round(16 * scale));
        MaxBlockPatches = Math.Max(MinBlockPatches, (int)Math.Round(60 * scale));
        MaxJitter = jitter ?? (int)Math.Round(3 * scale);
        MaxTries = maxTries;
        random = new Random(seed);
    }

    // The generator a run with these settings uses: MAE mode always masks at random (spec §8).
    public static MaskingGenerator ForSettings(BootMaeArchitecture architecture, BootMaePretrainerSettings settings, int seed)
        => new(
            architecture.GridSize,
            settings.Mode == BootMaeMode.Mae ? BootMaeMasking.Random : settings.Masking,
            seed,
            settings.MaskRatio,
            settings.MaskJitter);

    public int GridSize { get; }

    public int NumPatches => GridSize * GridSize;

    public BootMaeMasking Strategy { get; }

    // K: masked patches per sample (37 for 7×7, 48 for 8×8, 147 for 14×14).
    public int NumMasked { get; }

    public int NumKeep => NumPatches - NumMasked;

    // K_block: what the block stage aims for in BlockFill mode (30, 39, 120).
    public int BlockTarget { get; }

    public int MinBlockPatches { get; }

    public int MaxBlockPatches { get; }

    public int MaxJitter { get; }

    // Tries per block before the block stage gives up (the random fill then absorbs the shortfall).
    public int MaxTries { get; }

    // Masks for a batch; one roll jitter r is drawn per batch (block strategies only).
    public MaskBatch Next(int batchSize, Device? device = null)
    {
        int n = NumPatches;
        var shuffle = new long[batchSize * n];
        int roll = Strategy == BootMaeMasking.Random || MaxJitter == 0 ? 0 : random.Next(MaxJitter + 1);
        var order = new int[n];
        var keys = new double[n];
        for (int b = 0; b < batchSize; b++)
        {
            if (Strategy == BootMaeMasking.Random)
            {
                for (int i = 0; i < n; i++)
                {
                    keys[i] = random.NextDouble();
                }
            }
            else
            {
                var block = BlockMask(Strategy == BootMaeMasking.Block ? NumMasked : BlockTarget);
                // mask_to_index: block-unmasked patches first in random order, then block-masked ones in random order.
                for (int i = 0; i < n; i++)
                {
                    keys[i] = (block[i] ? 0.0 : 1.0) + random.NextDouble();
                }
            }

            for (int i = 0; i < n; i++)
            {
                order[i] = i;
                keys[i] = -keys[i];
            }

            Array.Sort(keys, order);
            for (int pos = 0; pos < n; pos++)
            {
                // Roll right by r: the last r (block-masked) patches move to the front and become visible.
                shuffle[(b * n) + ((pos + roll) % n)] = order[pos];
            }
        }

        return MaskBatch.FromShuffle(shuffle, batchSize, n, NumKeep, device);
    }

    // BEiT-style block mask aiming for exactly target patches (strict h < H, w < W; each accepted rectangle adds between
    // 1 and the remaining count). Gives up after MaxTries failed tries in a row, so it never hangs.
    internal bool[] BlockMask(int target)
    {
        int g = GridSize;
        var mask = new bool[g * g];
        int count = 0;
        while (count < target)
        {
            int remaining = target - count;
            int maxArea = Math.Min(remaining, MaxBlockPatches);
            int added = 0;
            for (int attempt = 0; attempt < MaxTries && added == 0; attempt++)
            {
                double area = MinBlockPatches + ((maxArea - MinBlockPatches) * random.NextDouble());
                double aspect = Math.Exp(logAspectMin + ((logAspectMax - logAspectMin) * random.NextDouble()));
                int h = (int)Math.Round(Math.Sqrt(area * aspect));
                int w = (int)Math.Round(Math.Sqrt(area / aspect));
                if (h >= g || w >= g || h == 0 || w == 0)
                {
                    continue;
                }

                int top = random.Next(g - h + 1);
                int left = random.Next(g - w + 1);
                int fresh = 0;
                for (int r = top; r < top + h; r++)
                {
                    for (int c = left; c < left + w; c++)
                    {
                        fresh += mask[(r * g) + c] ? 0 : 1;
                    }
                }

                if (fresh > 0 && fresh <= maxArea)
                {
                    for (int r = top; r < top + h; r++)
                    {
                        for (int c = left; c < left + w; c++)
                        {
                            mask[(r * g) + c] = true;
                        }
                    }

                    added = fresh;
                }
            }

            if (added == 0)
            {
                break;
            }

            count += added;
        }

        return mask;
    }
}
