using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Modules;

// Head on the pooled features (spec §6). Fine-tune: fc_norm (new LN) → Linear, weight trunc-normal std 0.02 scaled
// by 0.001, bias 0. Linear probe (MAE main_linprobe): fc_norm (fresh and frozen, so unit affine) →
// BatchNorm1d(affine: false, eps 1e-6) → Linear, weight trunc-normal std 0.01, bias 0.
internal sealed class ClassificationHead : nn.Module<Tensor, Tensor>
{
    private readonly LayerNorm fc_norm;
    private readonly BatchNorm1d? bn;
    private readonly Linear head;

    public ClassificationHead(int dim, int numClasses, bool linearProbe) : base(nameof(ClassificationHead))
    {
        fc_norm = nn.LayerNorm(dim, eps: 1e-6);
        bn = linearProbe ? nn.BatchNorm1d(dim, eps: 1e-6, affine: false) : null;
        head = nn.Linear(dim, numClasses);
        IsLinearProbe = linearProbe;
        RegisterComponents();
    }

    public bool IsLinearProbe { get; }

    public Linear Linear => head;

    // features B×D → logits B×K.
    public override Tensor forward(Tensor features)
    {
        var x = fc_norm.forward(features);
        if (bn is not null)
        {
            x = bn.forward(x);
        }

        return head.forward(x);
    }

    public void Initialize(Generator generator)
    {
        // timm's trunc_normal_ cuts at ±2 absolute, i.e. far beyond these tiny stds: the cut is kept at ±2σ here.
        double std = IsLinearProbe ? 0.01 : 0.02;
        using var _ = no_grad();
        nn.init.trunc_normal_(head.weight!, 0.0, std, -2 * std, 2 * std, generator);
        if (!IsLinearProbe)
        {
            using var scale = 0.001.ToScalar();
            head.weight!.mul_(scale);
        }

        head.bias!.zero_();
    }
}
