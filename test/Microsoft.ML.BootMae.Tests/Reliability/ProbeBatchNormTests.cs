using Microsoft.ML.BootMae.Modules;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Tests.Reliability;

/// <summary>
/// <see cref="ClassificationHead.BatchNorm"/> replaces <c>BatchNorm1d.forward</c> (whose batch count leaves implicit
/// Scalars to the finalizer) in the linear probe: outputs and running statistics must keep the same bits.
/// </summary>
[TestClass]
public sealed class ProbeBatchNormTests
{
    [TestMethod]
    [DataRow(false)]
    [DataRow(true)]
    public void MatchesTorchSharpsBatchNorm1dBitForBit(bool affine)
    {
        using var reference = nn.BatchNorm1d(6, eps: 1e-6, affine: affine);
        using var owned = nn.BatchNorm1d(6, eps: 1e-6, affine: affine);
        using var generator = new Generator(5);
        for (int i = 0; i < 6; i++)
        {
            using var scope = NewDisposeScope();
            bool training = i != 3 && i != 5;
            reference.train(training);
            owned.train(training);
            var x = randn(new long[] { 8, 6 }, generator: generator) * 3 + i;
            AssertBits(reference.forward(x), ClassificationHead.BatchNorm(owned, x), $"output {i}");
            AssertBits(reference.running_mean!, owned.running_mean!, $"running_mean {i}");
            AssertBits(reference.running_var!, owned.running_var!, $"running_var {i}");
            AssertBits(reference.num_batches_tracked!, owned.num_batches_tracked!, $"num_batches_tracked {i}");
        }

        Assert.AreEqual(4L, owned.num_batches_tracked!.item<long>(), "four training batches counted");
    }

    private static void AssertBits(Tensor expected, Tensor actual, string what)
    {
        Assert.AreEqual(expected.dtype, actual.dtype, what + ": dtype");
        CollectionAssert.AreEqual(expected.shape, actual.shape, what + ": shape");
        CollectionAssert.AreEqual(expected.bytes.ToArray(), actual.bytes.ToArray(), what + ": bits");
    }
}
