using Microsoft.VisualStudio.TestTools.UnitTesting;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Tests;

/// <summary>Element-wise closeness with a stated tolerance: |actual − expected| ≤ atol + rtol·|expected|.</summary>
internal static class TensorAssert
{
    public static void Close(Tensor expected, Tensor actual, double atol, double rtol, string what)
    {
        CollectionAssert.AreEqual(expected.shape, actual.shape, $"{what}: shape");
        using var scope = NewDisposeScope();
        var e = expected.detach().to(ScalarType.Float64);
        var a = actual.detach().to(ScalarType.Float64);
        var excess = ((a - e).abs() - (rtol * e.abs()) - atol).max().item<double>();
        var maxAbs = (a - e).abs().max().item<double>();
        Assert.IsLessThanOrEqualTo(0.0, excess, $"{what}: max |diff| {maxAbs:E3} exceeds atol {atol:E1} + rtol {rtol:E1}·|expected|");
    }

    public static void Equal(Tensor expected, Tensor actual, string what)
    {
        CollectionAssert.AreEqual(expected.shape, actual.shape, $"{what}: shape");
        using var same = expected.eq(actual).all();
        Assert.IsTrue(same.item<bool>(), $"{what}: tensors differ");
    }
}
