using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Modules;

// Pixel head of the regressor: ConvTranspose2d(d_r → C, kernel = stride = P) over the token grid, exactly the
// reference's layout (key lm_head.proj.weight is d_r×C×P×P). It equals a per-token Linear(d_r → P²C) + un-patchify
// with Linear weight[(c·P + p)·P + q, d] = proj.weight[d, c, p, q] and bias[(c·P + p)·P + q] = proj.bias[c].
internal sealed class PatchDeEmbed : nn.Module<Tensor, Tensor>, IMixedPrecisionModule
{
    private readonly ConvTranspose2d proj;
    private readonly int gridSize;
    private readonly int patchSize;

    public PatchDeEmbed(int dim, int channels, int patchSize, int gridSize) : base(nameof(PatchDeEmbed))
    {
        this.gridSize = gridSize;
        this.patchSize = patchSize;
        proj = OwnedTensors.Build(() => nn.ConvTranspose2d(dim, channels, patchSize, stride: patchSize));
        RegisterComponents();
    }

    public bool MixedPrecision { get; set; }

    // tokens B×N×d_r (patch tokens only, row-major) → image B×C×H×W.
    public override Tensor forward(Tensor tokens)
    {
        long b = tokens.shape[0];
        long d = tokens.shape[2];
        return Modules.MixedPrecision.PatchConvTranspose32(proj, tokens.transpose(1, 2).reshape(b, d, gridSize, gridSize), patchSize, MixedPrecision);
    }

    // The framework's default ConvTranspose2d init (kaiming-uniform with a = √5, i.e. U(±1/√fan_in) with
    // fan_in = C·P² from weight dim 1), drawn from the seeded generator so Create(seed) is reproducible.
    public void Initialize(Generator generator)
    {
        var w = proj.weight!;
        double bound = 1.0 / Math.Sqrt(w.shape[1] * w.shape[2] * w.shape[3]);
        using var _ = no_grad();
        w.uniform_(-bound, bound, generator);
        proj.bias!.uniform_(-bound, bound, generator);
    }
}
