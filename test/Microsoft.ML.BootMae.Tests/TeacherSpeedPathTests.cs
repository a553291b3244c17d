using Microsoft.ML.BootMae.Modules;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Tests;

/// <summary>
/// The teacher's speed paths keep the maths: the bf16 CPU attention (products in bf16 around a float32 softmax) and the
/// single-kernel EMA (lerp) against their plain forms.
/// </summary>
[TestClass]
public sealed class TeacherSpeedPathTests
{
    private static (Tensor Q, Tensor K, Tensor V) Inputs(int seed, int queries = 13, int keys = 13)
    {
        using var g = new Generator((ulong)seed);
        return (randn(new long[] { 2, 3, queries, 16 }, generator: g), randn(new long[] { 2, 3, keys, 16 }, generator: g), randn(new long[] { 2, 3, keys, 16 }, generator: g));
    }

    private static Tensor Reference(Tensor q, Tensor k, Tensor v) =>
        (q.matmul(k.transpose(-2, -1)) / Math.Sqrt(q.shape[^1])).softmax(-1).matmul(v);

    [TestMethod]
    public void Float32AttentionIsTheFusedKernel()
    {
        using var scope = NewDisposeScope();
        var (q, k, v) = Inputs(1);
        TensorAssert.Equal(nn.functional.scaled_dot_product_attention(q, k, v), AttentionKernels.Attend(q, k, v), "fp32 goes through SDPA unchanged");
        TensorAssert.Close(Reference(q, k, v), AttentionKernels.Attend(q, k, v), 1e-5, 1e-5, "and equals the written-out formula");
    }

    [TestMethod]
    public void BFloat16CpuAttentionMatchesFloat32WithinBFloat16Rounding()
    {
        using var scope = NewDisposeScope();
        using var guard = no_grad();
        var (q, k, v) = Inputs(2, queries: 13, keys: 7);
        var expected = Reference(q, k, v);
        var split = AttentionKernels.Attend(q.to(ScalarType.BFloat16), k.to(ScalarType.BFloat16), v.to(ScalarType.BFloat16));
        Assert.AreEqual(ScalarType.BFloat16, split.dtype, "bf16 in, bf16 out");
        CollectionAssert.AreEqual(expected.shape, split.shape, "cross-attention shapes (13 queries over 7 keys) are kept");

        // bf16 keeps 8 significant bits: about 0.4% per rounding, a few roundings deep.
        float error = (split.to(ScalarType.Float32) - expected).abs().max().item<float>();
        Assert.IsLessThan(0.03f, error, $"bf16 split attention off by {error}");

        // The fused bf16 kernel is no closer to float32 than the split path (the float32 softmax is the more accurate).
        var fused = nn.functional.scaled_dot_product_attention(q.to(ScalarType.BFloat16), k.to(ScalarType.BFloat16), v.to(ScalarType.BFloat16));
        float fusedError = (fused.to(ScalarType.Float32) - expected).abs().max().item<float>();
        Assert.IsLessThanOrEqualTo(fusedError * 1.5f + 1e-3f, error, $"split {error} vs fused {fusedError}");
    }

    [TestMethod]
    public void AttentionThatNeedsGradientsKeepsTheFusedKernel()
    {
        using var scope = NewDisposeScope();
        var (q, k, v) = Inputs(3);
        var qb = q.to(ScalarType.BFloat16).requires_grad_(true);
        var o = AttentionKernels.Attend(qb, k.to(ScalarType.BFloat16), v.to(ScalarType.BFloat16));
        o.to(ScalarType.Float32).sum().backward();
        Assert.IsNotNull(qb.grad, "gradients flow through the training path");
        TensorAssert.Equal(nn.functional.scaled_dot_product_attention(qb, k.to(ScalarType.BFloat16), v.to(ScalarType.BFloat16)), o, "same kernel as before");
    }

    [TestMethod]
    public void EmaUpdateIsExactAtBothEndsAndMatchesTheTwoOpForm()
    {
        using var scope = NewDisposeScope();
        var architecture = new BootMaeArchitecture
        {
            ImageSize = 8, PatchSize = 4, Channels = 1, EmbedDim = 16, Depth = 1, Heads = 2, RegressorDim = 16, RegressorHeads = 2, PredictorHeads = 2, DecoderDepth = 1,
        };
        using var student = new VisionTransformerEncoder(architecture);
        student.Initialize(new Generator(4));
        using var teacher = new MomentumTeacher(student);
        var before = teacher.Encoder.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());

        // Move the student away from the teacher.
        using (no_grad())
        {
            foreach (var p in student.parameters())
            {
                p.add_(0.1);
            }
        }

        var studentState = student.state_dict();
        teacher.Update(student, 1.0);
        foreach (var (key, value) in teacher.Encoder.state_dict())
        {
            TensorAssert.Equal(before[key], value, $"m = 1 leaves {key} unchanged");
        }

        teacher.Update(student, 0.3);
        foreach (var (key, value) in teacher.Encoder.state_dict())
        {
            TensorAssert.Close(before[key] * 0.3 + studentState[key] * 0.7, value, 1e-6, 1e-6, $"m = 0.3 on {key}");
        }

        teacher.Update(student, 0.0);
        foreach (var (key, value) in teacher.Encoder.state_dict())
        {
            TensorAssert.Equal(studentState[key], value, $"m = 0 copies {key} exactly");
        }
    }
}
