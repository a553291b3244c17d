using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Modules;

// BootMAE decode block: self-attention → cross-attention on the injected feature (own LN3 on the query stream and
// LN4 on the context, per block) → MLP. With injection off the cross-attention sub-layer and its norms do not exist,
// so their parameters are absent from the state_dict and the context argument is ignored.
internal sealed class DecoderBlock : nn.Module<Tensor, Tensor?, Tensor>
{
    private readonly LayerNorm norm1;
    private readonly Attention attn;
    private readonly LayerNorm norm2;
    private readonly Mlp mlp;
    private readonly LayerNorm? norm3;
    private readonly LayerNorm? norm4;
    private readonly CrossAttention? c_attn;

    public DecoderBlock(int dim, int contextDim, int heads, double mlpRatio, bool crossAttention) : base(nameof(DecoderBlock))
    {
        norm1 = nn.LayerNorm(dim, eps: 1e-6);
        attn = new Attention(dim, heads);
        norm2 = nn.LayerNorm(dim, eps: 1e-6);
        mlp = new Mlp(dim, (int)(dim * mlpRatio));
        if (crossAttention)
        {
            norm3 = nn.LayerNorm(dim, eps: 1e-6);
            norm4 = nn.LayerNorm(contextDim, eps: 1e-6);
            c_attn = new CrossAttention(dim, contextDim, heads);
        }

        RegisterComponents();
    }

    public bool HasCrossAttention => c_attn is not null;

    public override Tensor forward(Tensor x, Tensor? context)
    {
        x = x.add(attn.forward(norm1.forward(x)), TorchScalars.One);
        if (c_attn is not null)
        {
            if (context is null)
            {
                throw new ArgumentNullException(nameof(context), "This decoder block has cross-attention and needs the injected feature.");
            }

            x = x.add(c_attn.forward(norm3!.forward(x), norm4!.forward(context)), TorchScalars.One);
        }

        return x.add(mlp.forward(norm2.forward(x)), TorchScalars.One);
    }

    public void Initialize(Generator generator)
    {
        attn.Initialize(generator);
        mlp.Initialize(generator);
        c_attn?.Initialize(generator);
    }
}
