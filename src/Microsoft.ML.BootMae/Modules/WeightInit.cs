using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Modules;

// Seeded initialisers (spec §2.6). torch.nn.init.xavier_uniform_ takes no generator, so the bounds are computed here.
internal static class WeightInit
{
    public static void XavierUniform(Tensor weight, long fanIn, long fanOut, Generator generator)
    {
        double bound = Math.Sqrt(6.0 / (fanIn + fanOut));
        using var _ = no_grad();
        weight.uniform_(-bound, bound, generator);
    }

    public static void XavierUniform(Tensor weight, Generator generator)
        => XavierUniform(weight, weight.shape[1], weight.shape[0], generator);

    public static void Zero(Tensor? tensor)
    {
        if (tensor is null)
        {
            return;
        }

        using var _ = no_grad();
        OwnedTensors.Zero(tensor);
    }

    public static void Normal(Tensor tensor, double std, Generator generator)
    {
        using var _ = no_grad();
        tensor.normal_(0.0, std, generator);
    }

    // The official wrapper truncates at ±1σ, not ±2σ.
    public static void TruncatedNormalOneSigma(Tensor tensor, double std, Generator generator)
    {
        using var _ = no_grad();
        nn.init.trunc_normal_(tensor, 0.0, std, -std, std, generator);
    }
}
