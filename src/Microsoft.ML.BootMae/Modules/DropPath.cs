using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Modules;

// Stochastic depth on a residual branch (timm DropPath): in training, each sample's branch is zeroed with
// probability Rate and the survivors are scaled by 1/(1−Rate). Identity in eval mode or at rate 0.
// It has no parameters or buffers, so adding it to a block leaves the state_dict keys unchanged.
internal sealed class DropPath : nn.Module<Tensor, Tensor>
{
    public DropPath() : base(nameof(DropPath))
    {
    }

    public double Rate { get; set; }

    // Seeds the per-sample masks so that seeded runs are bit-reproducible; null uses torch's global generator.
    public Generator? Generator { get; set; }

    public override Tensor forward(Tensor branch)
    {
        if (!training || Rate <= 0)
        {
            return branch;
        }

        double keep = 1.0 - Rate;
        var shape = new long[branch.dim()];
        Array.Fill(shape, 1L);
        shape[0] = branch.shape[0];
        // rand < keep is a Bernoulli(keep) mask; drawn on the CPU generator so the draw is the same on any device.
        using var keepScalar = keep.ToScalar();
        var mask = rand(shape, dtype: ScalarType.Float32, generator: Generator).lt_(keepScalar).to(branch.dtype).to(branch.device);
        return branch * mask.div_(keepScalar);
    }
}
