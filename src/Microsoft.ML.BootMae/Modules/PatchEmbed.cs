using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Modules;

// Conv2d with kernel = stride = patch size; tokens come out in row-major order (n = row·W + col).
internal sealed class PatchEmbed : nn.Module<Tensor, Tensor>, IMixedPrecisionModule
{
    private readonly Conv2d proj;
    private readonly int patchSize;

    public PatchEmbed(int channels, int embedDim, int patchSize) : base(nameof(PatchEmbed))
    {
        proj = OwnedTensors.Build(() => nn.Conv2d(channels, embedDim, patchSize, stride: patchSize));
        this.patchSize = patchSize;
        RegisterComponents();
    }

    public Conv2d Projection => proj;

    public bool MixedPrecision { get; set; }

    // images B×C×H×W → tokens B×N×D.
    // Mixed: the tokens stay bf16 until the fp32 position table is added.
    public override Tensor forward(Tensor images) => Modules.MixedPrecision.PatchConv(proj, images, patchSize, MixedPrecision).flatten(2).transpose(1, 2);

    public void Initialize(Generator generator)
    {
        // Xavier on the flattened (D, C·P²) view, as if the conv were a Linear.
        var w = proj.weight!;
        WeightInit.XavierUniform(w, w.shape[1] * w.shape[2] * w.shape[3], w.shape[0], generator);
        WeightInit.Zero(proj.bias);
    }
}
