using System.Globalization;
using System.Text.RegularExpressions;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Interop;

// The key mapping of PyTorchWeights: wrapper prefixes, MAE/timm's fused qkv bias, Hugging Face's names, and the naming
// convention a file follows (which decides the input normalisation when the caller gives none).
internal static partial class PyTorchWeights
{
    // Wrappers stripped from the front of a key, repeatedly and in any order (model.module.encoder.blocks…).
    private static readonly string[] Prefixes = { "module.", "model.", "encoder.", "backbone.", "vit." };

    // Hugging Face roots (ViTModel, ViTMAEModel; under 'vit.' in ViTMAEForPreTraining): key stripping stops there,
    // because their 'encoder.' is part of the name.
    private static readonly string[] HuggingFaceRoots = { "embeddings.", "encoder.layer.", "layernorm." };

    // Strips wrapper prefixes and keeps encoder keys under the official names. MAE/timm's fused qkv bias becomes
    // q_bias/v_bias; Hugging Face's separate query/key/value become one qkv weight and q_bias/v_bias. A key bias is
    // dropped: it adds the same amount to every logit of a query (q·b_k), which softmax ignores. New tensors are made
    // in the caller's dispose scope.
    public static (Dictionary<string, Tensor> Weights, KeyNaming Naming) ToEncoderKeys(IReadOnlyDictionary<string, Tensor> raw)
    {
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        var hf = new SortedDictionary<int, Dictionary<string, Tensor>>();
        bool fused = false, split = false, maeDecoder = false;
        foreach (var (rawKey, value) in raw)
        {
            var key = StripPrefixes(rawKey);
            maeDecoder |= key is "decoder_embed.weight" or "decoder.decoder_embed.weight";
            if (MapHuggingFace(key, value, result, hf))
            {
                continue;
            }

            if (!IsEncoderKey(key))
            {
                continue;
            }

            if (key.EndsWith(".attn.qkv.bias", StringComparison.Ordinal))
            {
                fused = true;
                var stem = key[..^"qkv.bias".Length];
                long inner = value.shape[0] / 3;
                result[stem + "q_bias"] = value[..(int)inner];
                result[stem + "v_bias"] = value[(int)(2 * inner)..];
                continue;
            }

            split |= key.EndsWith(".attn.q_bias", StringComparison.Ordinal);
            result[key] = value;
        }

        foreach (var (block, parts) in hf)
        {
            var p = $"blocks.{block}.attn.";
            var missing = new[] { "query.weight", "key.weight", "value.weight" }.Where(k => !parts.ContainsKey(k)).ToList();
            if (missing.Count > 0)
            {
                throw new InvalidDataException(
                    $"Hugging Face block {block} lacks encoder.layer.{block}.attention.attention.{string.Join(" / ", missing)}; query, key and value weights are all needed to build its qkv weight.");
            }

            result[p + "qkv.weight"] = cat(new[] { parts["query.weight"], parts["key.weight"], parts["value.weight"] }, 0);
            if (parts.TryGetValue("query.bias", out var qb))
            {
                result[p + "q_bias"] = qb;
            }

            if (parts.TryGetValue("value.bias", out var vb))
            {
                result[p + "v_bias"] = vb;
            }
        }

        bool biasless = AddMissingQkvBiases(result);
        var kind = hf.Count > 0 ? KeyNamingKind.HuggingFace
            : fused ? KeyNamingKind.FusedQkv
            : split ? KeyNamingKind.BootMae
            : KeyNamingKind.Unknown;
        return (result, new KeyNaming(kind, maeDecoder, biasless));
    }

    // The file's key convention, which decides the input normalisation when the caller gives none.
    internal readonly record struct KeyNaming(KeyNamingKind Kind, bool HasMaeDecoder, bool HasNoQkvBias)
    {
        public string Describe() => Kind switch
        {
            KeyNamingKind.HuggingFace => HasMaeDecoder ? "Hugging Face ViTMAEForPreTraining names (vit.encoder.layer.N…, with the MAE decoder)" : "Hugging Face ViT / ViTMAE names (encoder.layer.N.attention.attention.query…)",
            KeyNamingKind.FusedQkv => HasMaeDecoder ? "MAE names (fused attn.qkv.bias, with MAE's decoder_embed)" : "MAE / timm names (fused attn.qkv.bias)",
            KeyNamingKind.BootMae => "BootMAE / BEiT names (attn.q_bias, attn.v_bias)",
            _ => "official ViT names without any qkv bias",
        };
    }

    internal enum KeyNamingKind
    {
        Unknown,
        BootMae,
        FusedQkv,
        HuggingFace,
    }

    private static string StripPrefixes(string key)
    {
        while (!HuggingFaceRoots.Any(r => key.StartsWith(r, StringComparison.Ordinal))
               && Prefixes.FirstOrDefault(p => key.StartsWith(p, StringComparison.Ordinal)) is { } prefix)
        {
            key = key[prefix.Length..];
        }

        return key;
    }

    [GeneratedRegex(@"^encoder\.layer\.(\d+)\.(.+)$", RegexOptions.CultureInvariant)]
    private static partial Regex HuggingFaceLayer();

    // Hugging Face ViT / ViTMAE (modeling_vit_mae.py) → official names; q/k/v parts are collected per block.
    private static bool MapHuggingFace(string key, Tensor value, Dictionary<string, Tensor> result, SortedDictionary<int, Dictionary<string, Tensor>> qkv)
    {
        string? target = key switch
        {
            "embeddings.cls_token" => "cls_token",
            "embeddings.position_embeddings" => "pos_embed",
            "embeddings.patch_embeddings.projection.weight" => "patch_embed.proj.weight",
            "embeddings.patch_embeddings.projection.bias" => "patch_embed.proj.bias",
            "layernorm.weight" => "norm.weight",
            "layernorm.bias" => "norm.bias",
            _ => null,
        };
        if (target is not null)
        {
            result[target] = value;
            return true;
        }

        var match = HuggingFaceLayer().Match(key);
        if (!match.Success)
        {
            return key.StartsWith("embeddings.", StringComparison.Ordinal) || key.StartsWith("layernorm.", StringComparison.Ordinal);
        }

        int block = int.Parse(match.Groups[1].Value, CultureInfo.InvariantCulture);
        var rest = match.Groups[2].Value;
        const string SelfAttention = "attention.attention.";
        if (rest.StartsWith(SelfAttention, StringComparison.Ordinal))
        {
            if (!qkv.TryGetValue(block, out var parts))
            {
                qkv[block] = parts = new Dictionary<string, Tensor>(StringComparer.Ordinal);
            }

            parts[rest[SelfAttention.Length..]] = value;
            return true;
        }

        var official = rest switch
        {
            "layernorm_before.weight" => "norm1.weight",
            "layernorm_before.bias" => "norm1.bias",
            "attention.output.dense.weight" => "attn.proj.weight",
            "attention.output.dense.bias" => "attn.proj.bias",
            "layernorm_after.weight" => "norm2.weight",
            "layernorm_after.bias" => "norm2.bias",
            "intermediate.dense.weight" => "mlp.fc1.weight",
            "intermediate.dense.bias" => "mlp.fc1.bias",
            "output.dense.weight" => "mlp.fc2.weight",
            "output.dense.bias" => "mlp.fc2.bias",
            _ => null,
        };
        if (official is not null)
        {
            result[$"blocks.{block}.{official}"] = value;
        }

        return true;
    }

    // A ViT trained with qkv_bias=False has no q/v biases: zeros give the same network.
    private static bool AddMissingQkvBiases(Dictionary<string, Tensor> weights)
    {
        bool added = false;
        foreach (var key in weights.Keys.Where(k => k.EndsWith(".attn.qkv.weight", StringComparison.Ordinal)).ToList())
        {
            var stem = key[..^"qkv.weight".Length];
            if (weights.ContainsKey(stem + "q_bias") || weights.ContainsKey(stem + "v_bias"))
            {
                continue;
            }

            long inner = weights[key].shape[0] / 3;
            weights[stem + "q_bias"] = zeros(inner, dtype: weights[key].dtype);
            weights[stem + "v_bias"] = zeros(inner, dtype: weights[key].dtype);
            added = true;
        }

        return added;
    }

    private static bool IsEncoderKey(string key)
        => key is "cls_token" or "pos_embed" or "norm.weight" or "norm.bias"
           || key.StartsWith("patch_embed.", StringComparison.Ordinal)
           || key.StartsWith("blocks.", StringComparison.Ordinal);
}
