using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Modules;

// Conv2d with kernel = stride = patch size; tokens come out in row-major order (n = row·W + col).
internal sealed class PatchEmbed : nn.Module<Tensor, Tensor>
{
    private readonly Conv2d proj;

    public PatchEmbed(int channels, int embedDim, int patchSize) : base(nameof(PatchEmbed))
    {
        proj = OwnedTensors.Build(() => nn.Conv2d(channels, embedDim, patchSize, stride: patchSize));
        RegisterComponents();
    }

    public Conv2d Projection => proj;

    // images B×C×H×W → tokens B×N×D.
    public override Tensor forward(Tensor images) => proj.forward(images).flatten(2).transpose(1, 2);

    public void Initialize(Generator generator)
    {
        // Xavier on the flattened (D, C·P²) view, as if the conv were a Linear.
        var w = proj.weight!;
        WeightInit.XavierUniform(w, w.shape[1] * w.shape[2] * w.shape[3], w.shape[0], generator);
        WeightInit.Zero(proj.bias);
    }
}
