using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Modules;

// Linear → GELU (exact erf form) → Linear.
internal sealed class Mlp : nn.Module<Tensor, Tensor>, IMixedPrecisionModule
{
    private readonly Linear fc1;
    private readonly Linear fc2;

    public Mlp(int dim, int hidden) : base(nameof(Mlp))
    {
        fc1 = nn.Linear(dim, hidden);
        fc2 = nn.Linear(hidden, dim);
        RegisterComponents();
    }

    public bool MixedPrecision { get; set; }

    // Mixed: GELU runs on fc1's bf16 output, so fc2 needs no cast (as under autocast).
    public override Tensor forward(Tensor x)
        => Modules.MixedPrecision.Linear(fc2, nn.functional.gelu(Modules.MixedPrecision.Linear(fc1, x, MixedPrecision)), MixedPrecision);

    public void Initialize(Generator generator)
    {
        WeightInit.XavierUniform(fc1.weight!, generator);
        WeightInit.Zero(fc1.bias);
        WeightInit.XavierUniform(fc2.weight!, generator);
        WeightInit.Zero(fc2.bias);
    }
}
