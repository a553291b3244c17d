using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Modules;

/// <summary>
/// Two TorchSharp 0.107 calls that leave a tensor wrapper alive outside any dispose scope, wrapped so that nothing is
/// left to the finalizer ("long-lived tensors are owned and disposed explicitly"; <c>TrainingTensorLeakTests</c>).
/// </summary>
/// <remarks>
/// <c>Tensor.zero_()</c> zeroes in place but returns a new wrapper of the same tensor, not <c>this</c>; and the
/// <c>Conv2d</c> / <c>ConvTranspose2d</c> constructors' default initialisation (<c>init.CalculateFanInAndFanOut</c>)
/// leaves one temporary tensor. Both are run inside a dispose scope that frees what they leave, and nothing else:
/// the values, and the draws from the global generator, are unchanged.
/// </remarks>
internal static class OwnedTensors
{
    /// <summary>Zeroes <paramref name="tensor"/> in place and frees the wrapper <c>zero_()</c> returns.</summary>
    public static void Zero(Tensor tensor)
    {
        using var scope = NewDisposeScope();
        tensor.zero_();
    }

    /// <summary>
    /// Builds a module and frees the temporaries its constructor leaves; its parameters and buffers go to the caller's
    /// dispose scope (none, as a rule), as if built there.
    /// </summary>
    public static T Build<T>(Func<T> create)
        where T : nn.Module
    {
        using var scope = NewDisposeScope();
        var module = create();
        foreach (var p in module.parameters())
        {
            p.MoveToOuterDisposeScope();
        }

        foreach (var b in module.buffers())
        {
            b.MoveToOuterDisposeScope();
        }

        return module;
    }
}
