using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Modules;

// BEiT-style multi-head self-attention: one fused qkv Linear without bias, plus learnable q_bias and v_bias
// (k has no bias). Inner width = heads·(dim / heads), which can be below dim (the 504 quirk of spec §2.3).
internal sealed class Attention : nn.Module<Tensor, Tensor>, IMixedPrecisionModule
{
    private readonly Linear qkv;
    private readonly Parameter q_bias;
    private readonly Parameter v_bias;
    private readonly Linear proj;
    private readonly int heads;
    private readonly int headDim;

    public Attention(int dim, int heads) : base(nameof(Attention))
    {
        this.heads = heads;
        headDim = dim / heads;
        int inner = headDim * heads;
        qkv = nn.Linear(dim, 3 * inner, hasBias: false);
        q_bias = new Parameter(zeros(inner));
        v_bias = new Parameter(zeros(inner));
        proj = nn.Linear(inner, dim);
        RegisterComponents();
    }

    public bool MixedPrecision { get; set; }

    public override Tensor forward(Tensor x)
    {
        long b = x.shape[0];
        long n = x.shape[1];
        var bias = cat(new[] { q_bias, zeros_like(v_bias), v_bias }, 0);
        var qkvOut = Modules.MixedPrecision.Linear(x, qkv.weight!, bias, MixedPrecision)
            .reshape(b, n, 3, heads, headDim)
            .permute(2, 0, 3, 1, 4);
        var o = AttentionKernels.Attend(qkvOut[0], qkvOut[1], qkvOut[2]);
        return Modules.MixedPrecision.Linear(proj, o.transpose(1, 2).reshape(b, n, heads * headDim), MixedPrecision);
    }

    public void Initialize(Generator generator)
    {
        // Q, K and V count as separate (inner × dim) matrices for the xavier bound.
        var w = qkv.weight!;
        WeightInit.XavierUniform(w, w.shape[1], w.shape[0] / 3, generator);
        WeightInit.Zero(q_bias);
        WeightInit.Zero(v_bias);
        WeightInit.XavierUniform(proj.weight!, generator);
        WeightInit.Zero(proj.bias);
    }
}
