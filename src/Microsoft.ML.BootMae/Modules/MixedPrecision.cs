using Microsoft.ML.BootMae.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Modules;

/// <summary>A module whose matrix products can run in bfloat16 (see <see cref="MixedPrecision"/>).</summary>
internal interface IMixedPrecisionModule
{
    /// <summary>True: the module's linear layers and convolutions compute in bfloat16 from its fp32 weights.</summary>
    bool MixedPrecision { get; set; }
}

/// <summary>
/// Mixed-precision training without an autocast (TorchSharp 0.107 has none: no <c>torch.amp</c>, no GradScaler): the
/// weights, their gradients and the optimizer state stay fp32, and each matrix product casts its input, weight and bias
/// to bfloat16 inside the forward. The casts are autograd ops, so the backward runs the products in bf16 and hands the
/// fp32 masters fp32 gradients, as PyTorch's autocast does.
/// </summary>
/// <remarks>
/// What runs in bf16 is what autocast puts in its lower-precision list: linear layers, the patch embedding and the
/// pixel head (conv / transposed conv), attention (<c>scaled_dot_product_attention</c> on bf16 q, k, v; its fused
/// kernels keep the softmax statistics in fp32), and GELU between the two MLP products. libtorch's bf16 GEMMs (cuBLAS,
/// oneDNN) accumulate in fp32. Everything else stays fp32: the residual stream (fp32 + bf16 promotes to fp32), every
/// LayerNorm and BatchNorm, the decoder inputs, the heads' outputs (cast back) and so the losses. bf16 has fp32's
/// exponent range, so no loss scaling is needed. A module with the flag off runs exactly the fp32 code it ran before
/// (same ops, same kernels), so Float32 and BFloat16 (teacher-only) runs are bit-identical to what they were.
/// </remarks>
internal static class MixedPrecision
{
    /// <summary>Sets <see cref="IMixedPrecisionModule.MixedPrecision"/> on <paramref name="root"/> and every module under it.</summary>
    /// <returns>How many modules took the flag (a test checks that none is missed).</returns>
    public static int Apply(nn.Module root, bool enabled)
    {
        int count = 0;
        foreach (var module in root.modules().Prepend(root))
        {
            if (module is IMixedPrecisionModule m)
            {
                m.MixedPrecision = enabled;
                count++;
            }
        }

        return count;
    }

    /// <summary>
    /// One line for a trainer: with <paramref name="precision"/> <see cref="BootMaePrecision.BFloat16Mixed"/> and fast bf16 on
    /// <paramref name="device"/>, switches <paramref name="network"/> to mixed precision (and, on CUDA, allows TF32 for the
    /// products that stay fp32); elsewhere logs why it trains in fp32. Disposing the result switches the network back to
    /// fp32 (a trained model predicts in fp32) and restores the TF32 setting.
    /// </summary>
    public static MixedPrecisionRun Configure(nn.Module network, BootMaePrecision precision, Device device, Action<string>? log)
    {
        if (precision != BootMaePrecision.BFloat16Mixed)
        {
            return new MixedPrecisionRun(null, null);
        }

        if (!TorchDevices.HasFastBFloat16(device))
        {
            log?.Invoke("bf16: not fast here (no AVX-512 BF16, AMX or CUDA); BFloat16Mixed trains in fp32.");
            return new MixedPrecisionRun(null, null);
        }

        Apply(network, true);
        bool? tf32Before = null;
        if (device.type == DeviceType.CUDA)
        {
            tf32Before = torch.backends.cuda.matmul.allow_tf32;
            torch.backends.cuda.matmul.allow_tf32 = true;
        }

        log?.Invoke("Mixed precision: matrix products in bfloat16, fp32 master weights, optimizer state, norms and losses" +
            (tf32Before is null ? "." : "; TF32 allowed for the products that stay fp32."));
        return new MixedPrecisionRun(network, tf32Before);
    }

    /// <summary>x in bf16 (no copy when it already is).</summary>
    public static Tensor Half(Tensor x) => x.dtype == ScalarType.BFloat16 ? x : x.to(ScalarType.BFloat16);

    /// <summary><paramref name="layer"/> applied to <paramref name="x"/>; in bf16 (bf16 result) when <paramref name="mixed"/>.</summary>
    public static Tensor Linear(Linear layer, Tensor x, bool mixed)
        => mixed ? Linear(x, layer.weight!, layer.bias, true) : layer.forward(x);

    /// <summary><c>linear(x, weight, bias)</c>; in bf16 (bf16 result) when <paramref name="mixed"/>.</summary>
    public static Tensor Linear(Tensor x, Tensor weight, Tensor? bias, bool mixed)
        => mixed
            ? nn.functional.linear(Half(x), Half(weight), bias is null ? null : Half(bias))
            : nn.functional.linear(x, weight, bias);

    /// <summary>A head or projection whose output leaves the bf16 region: in bf16 when <paramref name="mixed"/>, result in fp32.</summary>
    public static Tensor Linear32(Linear layer, Tensor x, bool mixed)
        => mixed ? Linear(x, layer.weight!, layer.bias, true).to(ScalarType.Float32) : layer.forward(x);

    /// <summary>A convolution with kernel = stride (the patch embedding); in bf16 (bf16 result) when <paramref name="mixed"/>.</summary>
    public static Tensor PatchConv(Conv2d conv, Tensor images, long stride, bool mixed)
        => mixed
            ? nn.functional.conv2d(Half(images), Half(conv.weight!), Half(conv.bias!), strides: new[] { stride, stride })
            : conv.forward(images);

    /// <summary>A transposed convolution with kernel = stride (the pixel head); in bf16 when <paramref name="mixed"/>, result in fp32.</summary>
    public static Tensor PatchConvTranspose32(ConvTranspose2d conv, Tensor tokens, long stride, bool mixed)
        => mixed
            ? nn.functional.conv_transpose2d(Half(tokens), Half(conv.weight!), Half(conv.bias!), new[] { stride, stride }).to(ScalarType.Float32)
            : conv.forward(tokens);
}

/// <summary>What <see cref="MixedPrecision.Configure"/> switched on; disposing it switches it off again.</summary>
internal sealed class MixedPrecisionRun : IDisposable
{
    private readonly nn.Module? _network;
    private readonly bool? _tf32Before;

    public MixedPrecisionRun(nn.Module? network, bool? tf32Before)
    {
        _network = network;
        _tf32Before = tf32Before;
    }

    /// <summary>True when the network trains in mixed precision.</summary>
    public bool Enabled => _network is not null;

    public void Dispose()
    {
        if (_network is { } network)
        {
            MixedPrecision.Apply(network, false);
        }

        if (_tf32Before is { } before)
        {
            torch.backends.cuda.matmul.allow_tf32 = before;
        }
    }
}
