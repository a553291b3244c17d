using System.Globalization;
using Microsoft.ML.BootMae.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Interop;

/// <summary>
/// The official BootMAE model's names (LightDXY/BootMAE, <c>VisionTransformerForMaskedImageModeling</c>): its state_dict
/// keys and trainable parameters in order, its registered model names, its optimizer's parameter groups, and whether one
/// of our pretraining networks has exactly its layout. <see cref="OfficialCheckpoint"/> writes and reads files with them.
/// </summary>
internal static class OfficialLayout
{
    private static readonly string[] AttentionNames = { "q_bias", "v_bias", "qkv.weight", "proj.weight", "proj.bias" };
    private static readonly string[] CrossAttentionNames = { "q_bias", "v_bias", "q.weight", "kv.weight", "proj.weight", "proj.bias" };

    /// <summary>
    /// The trainable parameters of the official model in <c>named_parameters()</c> order: the module's own parameters
    /// first (cls_token, mask_token, mask_token_1; the sin-cos tables are frozen), then its children in the order its
    /// <c>__init__</c> assigns them. The official optimizer numbers its parameters in this order, group by group.
    /// </summary>
    public static IReadOnlyList<string> TrainableNames(BootMaeArchitecture a)
    {
        var names = new List<string> { "cls_token", "mask_token", "mask_token_1" };
        names.AddRange(WeightAndBias("patch_embed.proj"));
        for (int i = 0; i < a.Depth; i++)
        {
            names.AddRange(BlockNames($"blocks.{i}."));
        }

        names.AddRange(WeightAndBias("norm"));
        for (int i = 0; i < a.DecoderDepth; i++)
        {
            names.AddRange(DecodeBlockNames($"decode_blocks.{i}."));
        }

        names.AddRange(WeightAndBias("decode_norm"));
        names.AddRange(WeightAndBias("down"));
        names.AddRange(WeightAndBias("lm_head.proj"));
        for (int i = 0; i < a.DecoderDepth; i++)
        {
            names.AddRange(DecodeBlockNames($"decode_blocks_1.{i}."));
        }

        names.AddRange(WeightAndBias("down_1"));
        names.AddRange(WeightAndBias("decode_norm_1"));
        names.AddRange(WeightAndBias("lm_head_1"));
        return names;
    }

    /// <summary>The official model's <c>state_dict()</c> keys in order (the two frozen sin-cos tables come first).</summary>
    public static IReadOnlyList<string> StateKeys(BootMaeArchitecture a)
        => new[] { "pos_embed", "de_pos_embed" }.Concat(TrainableNames(a)).ToList();

    /// <summary>The official registered model name for this architecture (<c>--model</c>), or null when none fits.</summary>
    public static string? ModelName(BootMaeArchitecture a)
    {
        static bool Same(BootMaeArchitecture x, BootMaeArchitecture y) => x with { DeepBlock = x.DeepBlockIndex } == y with { DeepBlock = y.DeepBlockIndex };
        return Same(a, BootMaeArchitecture.VitBase16) ? "bootmae_base" : Same(a, BootMaeArchitecture.VitLarge16) ? "bootmae_large" : null;
    }

    /// <summary>
    /// Throws <see cref="InvalidOperationException"/> unless <paramref name="network"/> has exactly the official model's
    /// state_dict: BootMAE mode, cross-attention in every decoder block (InjectRegressor and InjectPredictor on), decoder
    /// heads equal to the encoder's, and the shallow injection block not after the deep one.
    /// </summary>
    public static void Check(BootMaeNetwork network)
    {
        var a = network.Architecture;
        var problems = new List<string>();
        if (network.Regressor is null || network.Predictor is null)
        {
            problems.Add("the run is in MAE mode (the official model is BootMAE's pixel regressor + feature predictor)");
        }
        else if (network.Regressor.Blocks.Concat(network.Predictor.Blocks).Any(b => !b.HasCrossAttention))
        {
            problems.Add("InjectRegressor or InjectPredictor is off (every official decoder block has cross-attention)");
        }

        if (a.RegressorHeads != a.Heads || a.PredictorHeads != a.Heads)
        {
            problems.Add($"RegressorHeads = {a.RegressorHeads} and PredictorHeads = {a.PredictorHeads} differ from Heads = {a.Heads} (the official decoders use the encoder's head count)");
        }

        if (a.ShallowBlock > a.DeepBlockIndex)
        {
            problems.Add($"ShallowBlock {a.ShallowBlock} comes after the deep block {a.DeepBlockIndex} (the official fea_list hands out features in block order)");
        }

        if (problems.Count == 0)
        {
            var own = network.ReferenceStateDict().Keys.ToHashSet(StringComparer.Ordinal);
            var official = StateKeys(a);
            if (!own.SetEquals(official))
            {
                problems.Add($"its state_dict keys differ from the official ones (only ours: [{string.Join(", ", own.Except(official).Take(5))}]; only official: [{string.Join(", ", official.Except(own).Take(5))}])");
            }
        }

        if (problems.Count > 0)
        {
            throw new InvalidOperationException(
                "This pretraining network cannot be expressed as the official BootMAE VisionTransformerForMaskedImageModeling: " + string.Join("; ", problems) + ".");
        }
    }

    // The trainable names of the official model that a file's 'model' holds, in order (depths read from its keys).
    public static IReadOnlyList<string> NamesIn(IReadOnlyDictionary<string, Tensor> model)
    {
        static int Count(IEnumerable<string> keys, string prefix) => keys.Where(k => k.StartsWith(prefix, StringComparison.Ordinal))
            .Select(k => int.Parse(k[prefix.Length..].Split('.')[0], CultureInfo.InvariantCulture)).DefaultIfEmpty(-1).Max() + 1;

        var depth = Count(model.Keys, "blocks.");
        var decoderDepth = Count(model.Keys, "decode_blocks.");
        var names = TrainableNames(new BootMaeArchitecture { Depth = Math.Max(depth, 1), DecoderDepth = Math.Max(decoderDepth, 1) });
        var missing = names.Where(n => !model.ContainsKey(n)).ToList();
        if (depth < 1 || decoderDepth < 1 || missing.Count > 0)
        {
            throw new InvalidDataException($"The checkpoint's 'model' is not the official VisionTransformerForMaskedImageModeling (missing [{string.Join(", ", missing.Take(5))}]).");
        }

        return names;
    }

    // The official get_parameter_groups without layer decay: no_decay = 1-D, *.bias, or in no_weight_decay() (pos_embed,
    // cls_token); groups in order of their first parameter, so [no_decay, decay] as cls_token comes first.
    public static List<(bool NoDecay, List<string> Names)> Groups(IReadOnlyList<string> trainable, Func<string, long> dims)
    {
        var groups = new List<(bool NoDecay, List<string> Names)>();
        foreach (var name in trainable)
        {
            bool noDecay = dims(name) == 1 || name.EndsWith(".bias", StringComparison.Ordinal) || name is "pos_embed" or "cls_token";
            int g = groups.FindIndex(x => x.NoDecay == noDecay);
            if (g < 0)
            {
                groups.Add((noDecay, new List<string>()));
                g = groups.Count - 1;
            }

            groups[g].Names.Add(name);
        }

        return groups;
    }

    private static IEnumerable<string> WeightAndBias(string prefix) => new[] { prefix + ".weight", prefix + ".bias" };

    private static IEnumerable<string> BlockNames(string p)
        => WeightAndBias(p + "norm1").Concat(AttentionNames.Select(n => p + "attn." + n)).Concat(WeightAndBias(p + "norm2"))
            .Concat(WeightAndBias(p + "mlp.fc1")).Concat(WeightAndBias(p + "mlp.fc2"));

    private static IEnumerable<string> DecodeBlockNames(string p)
        => BlockNames(p).Concat(WeightAndBias(p + "norm3")).Concat(WeightAndBias(p + "norm4")).Concat(CrossAttentionNames.Select(n => p + "c_attn." + n));
}
