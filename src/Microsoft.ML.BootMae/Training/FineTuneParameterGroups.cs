using Microsoft.ML.BootMae.Modules;
using TorchSharp.Modules;

namespace Microsoft.ML.BootMae.Training;

/// <summary>One AdamW group of fine-tuning: its parameters, lr multiplier (layer decay) and weight decay.</summary>
internal sealed record FineTuneParameterGroup(List<(string Name, Parameter Parameter)> Parameters, double LearningRateScale, double WeightDecay);

/// <summary>The AdamW parameter groups of fine-tuning: layer-wise learning-rate decay (spec §6, §10.15) crossed with weight decay or not.</summary>
internal static class FineTuneParameterGroups
{
    /// <summary>
    /// Learning-rate multiplier of a classifier parameter: layer id 0 for patch_embed, cls_token and pos_embed, k + 1 for
    /// block k, L + 1 for everything else (fc_norm, head); scale = ld^(L + 1 − id).
    /// </summary>
    public static double LayerDecayScale(string name, int depth, double layerDecay)
    {
        int id = depth + 1;
        if (name.StartsWith("encoder.", StringComparison.Ordinal))
        {
            var rest = name["encoder.".Length..];
            if (rest.StartsWith("patch_embed.", StringComparison.Ordinal) || rest is "cls_token" or "pos_embed")
            {
                id = 0;
            }
            else if (rest.StartsWith("blocks.", StringComparison.Ordinal))
            {
                var index = rest["blocks.".Length..];
                id = int.Parse(index[..index.IndexOf('.')], System.Globalization.CultureInfo.InvariantCulture) + 1;
            }
        }

        return Math.Pow(layerDecay, depth + 1 - id);
    }

    /// <summary>
    /// The AdamW groups: one per (layer id, decay or not), in a fixed order; only parameters that train are listed
    /// (<see cref="ClassifierFreezePolicy"/> decides which).
    /// </summary>
    public static List<FineTuneParameterGroup> Build(ImageClassifier model, double layerDecay, double weightDecay)
    {
        int depth = model.Encoder.Depth;
        var groups = new SortedDictionary<(double Scale, bool NoDecay), List<(string, Parameter)>>(
            Comparer<(double Scale, bool NoDecay)>.Create((a, b) => a.Scale != b.Scale ? a.Scale.CompareTo(b.Scale) : a.NoDecay.CompareTo(b.NoDecay)));
        foreach (var (name, parameter) in model.named_parameters())
        {
            if (!parameter.requires_grad)
            {
                continue;
            }

            var key = (LayerDecayScale(name, depth, layerDecay), ParameterGroups.IsNoDecay(name, parameter));
            if (!groups.TryGetValue(key, out var list))
            {
                groups[key] = list = new List<(string, Parameter)>();
            }

            list.Add((name, parameter));
        }

        return groups.Select(g => new FineTuneParameterGroup(g.Value, g.Key.Scale, g.Key.NoDecay ? 0.0 : weightDecay)).ToList();
    }
}
