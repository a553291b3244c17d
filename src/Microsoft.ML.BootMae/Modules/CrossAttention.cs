using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Modules;

// Multi-head cross-attention of the decoder blocks: queries from the decoder stream (1+N tokens), keys/values from the
// injected encoder feature (1+N_v tokens). q and kv have no Linear bias; q_bias and v_bias are added, k has none.
internal sealed class CrossAttention : nn.Module<Tensor, Tensor, Tensor>, IMixedPrecisionModule
{
    private readonly Linear q;
    private readonly Linear kv;
    private readonly Parameter q_bias;
    private readonly Parameter v_bias;
    private readonly Linear proj;
    private readonly int heads;
    private readonly int headDim;

    public CrossAttention(int dim, int contextDim, int heads) : base(nameof(CrossAttention))
    {
        this.heads = heads;
        headDim = dim / heads;
        int inner = headDim * heads;
        q = nn.Linear(dim, inner, hasBias: false);
        kv = nn.Linear(contextDim, 2 * inner, hasBias: false);
        q_bias = new Parameter(zeros(inner));
        v_bias = new Parameter(zeros(inner));
        proj = nn.Linear(inner, dim);
        RegisterComponents();
    }

    public bool MixedPrecision { get; set; }

    public override Tensor forward(Tensor x, Tensor context)
    {
        long b = x.shape[0];
        long n = x.shape[1];
        long m = context.shape[1];
        var query = Modules.MixedPrecision.Linear(x, q.weight!, q_bias, MixedPrecision).reshape(b, n, heads, headDim).transpose(1, 2);
        var kvBias = cat(new[] { zeros_like(v_bias), v_bias }, 0);
        var keyValue = Modules.MixedPrecision.Linear(context, kv.weight!, kvBias, MixedPrecision).reshape(b, m, 2, heads, headDim).permute(2, 0, 3, 1, 4);
        var o = AttentionKernels.Attend(query, keyValue[0], keyValue[1]);
        return Modules.MixedPrecision.Linear(proj, o.transpose(1, 2).reshape(b, n, heads * headDim), MixedPrecision);
    }

    public void Initialize(Generator generator)
    {
        WeightInit.XavierUniform(q.weight!, generator);
        WeightInit.XavierUniform(kv.weight!, generator);
        WeightInit.Zero(q_bias);
        WeightInit.Zero(v_bias);
        WeightInit.XavierUniform(proj.weight!, generator);
        WeightInit.Zero(proj.bias);
    }
}
