using TorchSharp;

namespace Microsoft.ML.BootMae.Modules;

/// <summary>
/// Process-lifetime TorchSharp scalars for the constants of the hot paths.
/// </summary>
/// <remarks>
/// TorchSharp 0.107 turns a number into a native <see cref="Scalar"/> implicitly (<c>x.mul(2.0)</c>, <c>x + 1e-5</c>, and
/// also inside <c>a + b</c>, <c>add_(t)</c> and <c>square()</c>, which pass a hidden alpha or exponent) and nothing
/// disposes it: the GC's finalizer frees it, possibly while libtorch is still reading it ("Unknown scalar type",
/// TorchSharp #1496). So the library never converts implicitly: constants come from here (never disposed, always
/// reachable), and per-call values are <c>using var s = value.ToScalar();</c>. Each keeps the .NET type TorchSharp's
/// implicit conversion used (an int stays an int scalar, a double a double), so the numerics are unchanged.
/// <c>ImplicitScalarGuardTests</c> fails on any new implicit conversion. TorchSharp code reached through a virtual call
/// (an optimizer's <c>step</c>, a module's <c>forward</c>) is out of that guard's sight: the library steps with its own
/// <c>OwnedAdamW</c> and runs the probe's BatchNorm through <c>ClassificationHead.BatchNorm</c> for that reason.
/// </remarks>
internal static class TorchScalars
{
    /// <summary>The int 1: the alpha of <c>add(t, alpha)</c>, which TorchSharp's <c>a + b</c> and <c>add_(t)</c> pass implicitly.</summary>
    public static readonly Scalar One = 1.ToScalar();

    /// <summary>The int 2: the exponent of TorchSharp's <c>square()</c> (<c>pow(2)</c>).</summary>
    public static readonly Scalar Two = 2.ToScalar();

    /// <summary>The double 1.0.</summary>
    public static readonly Scalar OneDouble = 1.0.ToScalar();

    /// <summary>The double 2.0.</summary>
    public static readonly Scalar TwoDouble = 2.0.ToScalar();

    /// <summary>The double 0.0.</summary>
    public static readonly Scalar ZeroDouble = 0.0.ToScalar();
}
