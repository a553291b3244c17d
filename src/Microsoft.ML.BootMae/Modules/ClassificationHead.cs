using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Modules;

// Head on the pooled features (spec §6). Fine-tune: fc_norm (new LN) → Linear, weight trunc-normal std 0.02 scaled
// by 0.001, bias 0. Linear probe (MAE main_linprobe): fc_norm (fresh and frozen, so unit affine) →
// BatchNorm1d(affine: false, eps 1e-6) → Linear, weight trunc-normal std 0.01, bias 0.
internal sealed class ClassificationHead : nn.Module<Tensor, Tensor>, IMixedPrecisionModule
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

    public bool MixedPrecision { get; set; }

    // features B×D → logits B×K.
    public override Tensor forward(Tensor features)
    {
        var x = fc_norm.forward(features);
        if (bn is not null)
        {
            x = BatchNorm(bn, x);
        }

        return Modules.MixedPrecision.Linear32(head, x, MixedPrecision);
    }

    /// <summary>
    /// <c>BatchNorm1d.forward</c> of TorchSharp 0.107, step for step, except that the batch count is incremented with
    /// owned scalars: its <c>num_batches_tracked.add_(1)</c> leaves two implicit Scalars to the finalizer on every
    /// training step of a linear probe (TorchSharp #1496, see <see cref="TorchScalars"/>).
    /// </summary>
    internal static Tensor BatchNorm(BatchNorm1d bn, Tensor x)
    {
        double factor = bn.momentum ?? 0.0;
        if (bn.training && bn.track_running_stats && bn.num_batches_tracked is { } count)
        {
            count.add_(TorchScalars.One, TorchScalars.One);
            // TorchSharp's (double)count would leave a Scalar too; momentum is 0.1 here anyway.
            factor = bn.momentum ?? 1.0 / count.item<long>();
        }

        bool batchStatistics = bn.training || (bn.running_mean is null && bn.running_var is null);
        bool runningStatistics = !bn.training || bn.track_running_stats;
        return nn.functional.batch_norm(x, runningStatistics ? bn.running_mean : null, runningStatistics ? bn.running_var : null,
            bn.affine ? bn.weight : null, bn.bias, batchStatistics, factor, bn.eps);
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

        OwnedTensors.Zero(head.bias!);
    }
}
