using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Modules;

// Loading and copying encoder weights: every path that fills a VisionTransformerEncoder from a file, a checkpoint or
// another live encoder (clone, extract, initial and frozen teacher encoders, the bf16 twin, fine-tuning's copy) goes
// through here, so the key and shape checks and their messages are the same everywhere.
internal static class EncoderWeights
{
    // Copies weights into module under no_grad. With strict, missing or unexpected keys are an error; a key whose shape
    // differs always is. source names where the weights came from, for the message.
    public static void Load(VisionTransformerEncoder module, IReadOnlyDictionary<string, Tensor> weights, bool strict, string source)
    {
        var own = module.state_dict();
        var missing = own.Keys.Where(k => !weights.ContainsKey(k)).ToList();
        var unexpected = weights.Keys.Where(k => !own.ContainsKey(k)).ToList();
        if (strict && (missing.Count > 0 || unexpected.Count > 0))
        {
            throw new InvalidDataException(
                $"{source} does not match this encoder architecture. Missing: [{string.Join(", ", missing.Take(8))}{(missing.Count > 8 ? ", …" : "")}]. " +
                $"Unexpected: [{string.Join(", ", unexpected.Take(8))}{(unexpected.Count > 8 ? ", …" : "")}]. Check ImageSize, PatchSize, Channels, EmbedDim and Depth.");
        }

        using var _ = no_grad();
        foreach (var (key, target) in own)
        {
            if (!weights.TryGetValue(key, out var value))
            {
                continue;
            }

            if (!value.shape.SequenceEqual(target.shape))
            {
                throw new InvalidDataException(
                    $"{source}: '{key}' has shape [{string.Join(", ", value.shape)}] but this architecture needs [{string.Join(", ", target.shape)}]. Check ImageSize, PatchSize, Channels, EmbedDim and Depth.");
            }

            target.copy_(value);
        }
    }

    // source's weights → host → target (strict), whatever devices the two live on; the host copies die with the scope.
    public static void CopyInto(VisionTransformerEncoder source, VisionTransformerEncoder target, string what)
    {
        using var scope = NewDisposeScope();
        Load(target, source.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.cpu()), strict: true, source: what);
    }

    // A new encoder of architecture on the host holding source's weights; the caller moves it and owns it.
    public static VisionTransformerEncoder Copy(VisionTransformerEncoder source, BootMaeArchitecture architecture, string what)
    {
        var module = new VisionTransformerEncoder(architecture);
        try
        {
            CopyInto(source, module, what);
            return module;
        }
        catch
        {
            module.Dispose();
            throw;
        }
    }
}
