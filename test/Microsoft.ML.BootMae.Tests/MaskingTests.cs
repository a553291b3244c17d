using Microsoft.ML.BootMae.Training;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Tests;

/// <summary>Spec §3 / §7.1 / §10.2: mask counts, composition, permutation algebra and the grid scaling rule.</summary>
[TestClass]
public sealed class MaskingTests
{
    [TestMethod]
    [DataRow(7, 37, 30, 4, 15, 1)]
    [DataRow(8, 48, 39, 5, 20, 1)]
    [DataRow(14, 147, 120, 16, 60, 3)]
    public void ScalingRuleMatchesSpec(int grid, int k, int kBlock, int min, int max, int jitter)
    {
        var g = new MaskingGenerator(grid, BootMaeMasking.BlockFill, seed: 1);
        Assert.AreEqual(k, g.NumMasked, "K");
        Assert.AreEqual(kBlock, g.BlockTarget, "K_block");
        Assert.AreEqual(min, g.MinBlockPatches, "min block");
        Assert.AreEqual(max, g.MaxBlockPatches, "max block");
        Assert.AreEqual(jitter, g.MaxJitter, "jitter");
    }

    [TestMethod]
    [DataRow(7, (int)BootMaeMasking.BlockFill)]
    [DataRow(7, (int)BootMaeMasking.Block)]
    [DataRow(7, (int)BootMaeMasking.Random)]
    [DataRow(8, (int)BootMaeMasking.BlockFill)]
    [DataRow(14, (int)BootMaeMasking.BlockFill)]
    public void EveryMaskHasExactlyKPatchesAndIdsArePermutations(int grid, int strategyValue)
    {
        var strategy = (BootMaeMasking)strategyValue;
        using var scope = NewDisposeScope();
        var g = new MaskingGenerator(grid, strategy, seed: 7);
        int n = grid * grid;
        for (int batch = 0; batch < 20; batch++)
        {
            using var m = g.Next(16);
            var counts = m.Mask.sum(1).data<float>().ToArray();
            Assert.IsTrue(counts.All(c => c == g.NumMasked), $"masked counts {string.Join(",", counts.Distinct())}, expected {g.NumMasked}");

            // Disjoint visible/masked sets whose union is {0..N-1}: each row of ids_shuffle is a permutation.
            var sorted = m.IdsShuffle.sort(1).Values;
            var expected = arange(n, ScalarType.Int64).expand(16, n);
            TensorAssert.Equal(expected, sorted, "sorted ids_shuffle");

            // ids_restore[ids_shuffle] = identity, and the mask marks exactly the ids after NumKeep.
            TensorAssert.Equal(expected, m.IdsRestore.gather(1, m.IdsShuffle), "ids_restore ∘ ids_shuffle");
            TensorAssert.Equal(ones(16, g.NumMasked), m.Mask.gather(1, m.IdsMasked), "mask at masked ids");
            TensorAssert.Equal(zeros(16, g.NumKeep), m.Mask.gather(1, m.IdsKeep), "mask at visible ids");
        }
    }

    [TestMethod]
    [DataRow(7)]
    [DataRow(8)]
    [DataRow(14)]
    public void BlockStageReachesKBlock(int grid)
    {
        var g = new MaskingGenerator(grid, BootMaeMasking.BlockFill, seed: 3);
        int reached = 0;
        const int trials = 500;
        for (int i = 0; i < trials; i++)
        {
            reached += g.BlockMask(g.BlockTarget).Count(b => b) == g.BlockTarget ? 1 : 0;
        }

        // The retry cap (100 tries per block) may in principle stop short; in practice it never does.
        Assert.AreEqual(trials, reached, $"block stage reached K_block in {reached}/{trials} samples");
    }

    [TestMethod]
    public void BlockStageNeverOvershootsAndNeverHangs()
    {
        // A 2×2 grid cannot hold any block with h < 2 and w < 2 larger than 1, and min > 1 areas mostly round away.
        var g = new MaskingGenerator(2, BootMaeMasking.Block, seed: 5);
        for (int i = 0; i < 200; i++)
        {
            Assert.IsLessThanOrEqualTo(g.NumMasked, g.BlockMask(g.NumMasked).Count(b => b));
        }

        using var m = g.Next(4);
        using var counts = m.Mask.sum(1);
        Assert.IsTrue(counts.eq(g.NumMasked).all().item<bool>(), "the random fill absorbs any shortfall");
    }

    [TestMethod]
    public void BlockFillMasksContainTheBlocksWhenJitterIsOff()
    {
        // With jitter 0 all block-masked patches are masked; the fill adds exactly K − K_block random ones.
        var g = new MaskingGenerator(7, BootMaeMasking.BlockFill, seed: 11, jitter: 0);
        using var m = g.Next(64);
        var mask = m.Mask.data<float>().ToArray();
        int n = 49;
        int contiguous = 0;
        for (int b = 0; b < 64; b++)
        {
            // Count masked 4-neighbour pairs: block masks are far more clustered than a random mask.
            for (int r = 0; r < 7; r++)
            {
                for (int c = 0; c < 6; c++)
                {
                    contiguous += mask[(b * n) + (r * 7) + c] > 0 && mask[(b * n) + (r * 7) + c + 1] > 0 ? 1 : 0;
                }
            }
        }

        var random = new MaskingGenerator(7, BootMaeMasking.Random, seed: 11);
        using var rm = random.Next(64);
        var rmask = rm.Mask.data<float>().ToArray();
        int randomContiguous = 0;
        for (int b = 0; b < 64; b++)
        {
            for (int r = 0; r < 7; r++)
            {
                for (int c = 0; c < 6; c++)
                {
                    randomContiguous += rmask[(b * n) + (r * 7) + c] > 0 && rmask[(b * n) + (r * 7) + c + 1] > 0 ? 1 : 0;
                }
            }
        }

        Assert.IsGreaterThan(randomContiguous, contiguous, "block masks should have more masked horizontal neighbours than random ones");
    }

    [TestMethod]
    public void MasksDifferPerSampleAndAreDeterministicPerSeed()
    {
        var a = new MaskingGenerator(7, BootMaeMasking.BlockFill, seed: 42);
        var b = new MaskingGenerator(7, BootMaeMasking.BlockFill, seed: 42);
        using var ma = a.Next(8);
        using var mb = b.Next(8);
        TensorAssert.Equal(ma.IdsShuffle, mb.IdsShuffle, "same seed, same masks");
        var rows = Enumerable.Range(0, 8).Select(i => string.Join(",", ma.Mask[i].data<float>().ToArray())).Distinct().Count();
        Assert.AreEqual(8, rows, "every sample gets its own mask");
    }

    [TestMethod]
    public void MaeModeUsesRandomMasking()
    {
        var arch = new BootMaeArchitecture { ImageSize = 28, PatchSize = 4, Channels = 1, EmbedDim = 32, Depth = 2, Heads = 2 };
        var g = MaskingGenerator.ForSettings(arch, OfficialSettings.Create(s => { s.Mode = BootMaeMode.Mae; s.Masking = BootMaeMasking.BlockFill; }), 1);
        Assert.AreEqual(BootMaeMasking.Random, g.Strategy);
        Assert.AreEqual(37, g.NumMasked);
    }
}
