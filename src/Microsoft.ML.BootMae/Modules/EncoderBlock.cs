using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Modules;

// Pre-norm ViT block: x += DropPath(Attn(LN1 x)); x += DropPath(MLP(LN2 x)). LN eps 1e-6, no layer-scale.
// Drop path is 0 (identity) unless fine-tuning sets it; it owns no tensors, so the state_dict keys are unchanged.
internal sealed class EncoderBlock : nn.Module<Tensor, Tensor>
{
    private readonly LayerNorm norm1;
    private readonly Attention attn;
    private readonly LayerNorm norm2;
    private readonly Mlp mlp;
    private readonly DropPath drop_path = new();

    public EncoderBlock(int dim, int heads, double mlpRatio) : base(nameof(EncoderBlock))
    {
        norm1 = nn.LayerNorm(dim, eps: 1e-6);
        attn = new Attention(dim, heads);
        norm2 = nn.LayerNorm(dim, eps: 1e-6);
        mlp = new Mlp(dim, (int)(dim * mlpRatio));
        RegisterComponents();
    }

    public DropPath DropPath => drop_path;

    public override Tensor forward(Tensor x)
    {
        x = x.add(drop_path.forward(attn.forward(norm1.forward(x))), TorchScalars.One);
        return x.add(drop_path.forward(mlp.forward(norm2.forward(x))), TorchScalars.One);
    }

    public void Initialize(Generator generator)
    {
        attn.Initialize(generator);
        mlp.Initialize(generator);
    }
}
