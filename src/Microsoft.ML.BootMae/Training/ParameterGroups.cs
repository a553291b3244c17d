using Microsoft.ML.BootMae.Modules;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Training;

// AdamW parameter groups of spec §5 / §10.13. The teacher is not a child of BootMaeNetwork, so it cannot appear here;
// frozen parameters (the sin-cos tables) are left out entirely.
internal static class ParameterGroups
{
    public const double Beta1 = 0.9;
    public const double Beta2 = 0.95;
    public const double Epsilon = 1e-8;

    // No weight decay: every ≤1-D parameter, every *.bias, cls_token and pos_embed. Mask tokens (3-D) are decayed,
    // as in the reference code and MAE.
    public static bool IsNoDecay(string name, Parameter parameter)
    {
        string last = name[(name.LastIndexOf('.') + 1)..];
        return parameter.dim() <= 1 || last == "bias" || last is "cls_token" or "pos_embed";
    }

    public static (List<(string Name, Parameter Parameter)> Decay, List<(string Name, Parameter Parameter)> NoDecay) Split(nn.Module network)
    {
        var decay = new List<(string, Parameter)>();
        var noDecay = new List<(string, Parameter)>();
        foreach (var (name, p) in network.named_parameters())
        {
            if (!p.requires_grad)
            {
                continue;
            }

            (IsNoDecay(name, p) ? noDecay : decay).Add((name, p));
        }

        return (decay, noDecay);
    }

    // AdamW(β 0.9/0.95, eps 1e-8) with two groups: weightDecay on matrices, 0 on the no-decay set. The learning rate
    // is the initial one; schedulers change the groups' LearningRate.
    public static OwnedAdamW CreateAdamW(BootMaeNetwork network, double learningRate, double weightDecay)
    {
        var (decay, noDecay) = Split(network);
        return new OwnedAdamW(new OwnedAdamW.ParamGroup[]
        {
            new(decay.Select(x => x.Parameter), learningRate, weightDecay, Beta1, Beta2, Epsilon),
            new(noDecay.Select(x => x.Parameter), learningRate, 0.0, Beta1, Beta2, Epsilon),
        });
    }
}
