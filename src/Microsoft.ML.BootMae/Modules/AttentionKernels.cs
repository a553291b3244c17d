using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Modules;

// softmax(q·kᵀ/√d)·v over B×H×N×d inputs, for self- and cross-attention.
internal static class AttentionKernels
{
    public static Tensor Attend(Tensor q, Tensor k, Tensor v)
    {
        if (q.dtype == ScalarType.BFloat16 && q.device_type == DeviceType.CPU && !q.requires_grad)
        {
            // The bf16 teacher on a CPU: libtorch's bf16 softmax is not vectorised, and there the fused kernel took
            // about 7% longer over a tiny28 teacher forward (docs/benchmarks.md) than bf16 products around a float32
            // softmax, which is also the more accurate of the two. No gradients flow here, so nothing is lost.
            using var scores = q.matmul(k.transpose(-2, -1));
            using var scores32 = scores.to(ScalarType.Float32);
            using var scale = (1.0 / Math.Sqrt(q.shape[^1])).ToScalar();
            scores32.mul_(scale);
            using var weights32 = scores32.softmax(-1);
            using var weights = weights32.to(ScalarType.BFloat16);
            return weights.matmul(v);
        }

        // The default scale of scaled_dot_product_attention is head_dim^-0.5, the reference's scale.
        return nn.functional.scaled_dot_product_attention(q, k, v);
    }
}
