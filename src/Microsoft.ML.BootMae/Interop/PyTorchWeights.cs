using TorchSharp;
using TorchSharp.PyBridge;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Interop;

// Reads PyTorch weight files as plain data and maps their keys onto VisionTransformerEncoder's (the official names).
internal static class PyTorchWeights
{
    private static readonly string[] Prefixes = { "module.", "model.", "encoder.", "backbone." };

    // .safetensors: parsed directly. .pth/.pt: torch.save's zip format through TorchSharp.PyBridge, whose unpickler
    // only rebuilds tensors and dictionaries and never runs code from the file.
    public static Dictionary<string, Tensor> Read(string path)
    {
        var extension = Path.GetExtension(path).ToLowerInvariant();
        if (extension == ".safetensors")
        {
            return Safetensors.Load(path);
        }

        if (extension is ".pth" or ".pt" or ".bin" or ".ckpt")
        {
            try
            {
                using var stream = File.OpenRead(path);
                return UnpickleStateDict(stream);
            }
            catch (Exception ex) when (ex is InvalidCastException or NotImplementedException or InvalidOperationException or KeyNotFoundException or InvalidDataException)
            {
                throw new InvalidDataException(
                    $"'{path}' could not be read as a PyTorch state_dict ({ex.Message}). It must be a torch.save(model.state_dict()) file in the zip format; " +
                    "a checkpoint that nests the weights (e.g. the official BootMAE files, where they sit under 'model') must be re-saved with " +
                    "torch.save(ckpt['model'], path) or converted to .safetensors.", ex);
            }
        }

        throw new InvalidDataException($"'{path}': unknown weights format '{extension}'. Use .safetensors, or a .pth/.pt file written by torch.save.");
    }

    // Strips wrapper prefixes, keeps encoder keys only, and turns a fused qkv bias (MAE/timm) into q_bias/v_bias.
    // The key part of a fused bias is dropped: it adds the same constant to all logits of a query, which softmax ignores.
    public static Dictionary<string, Tensor> ToEncoderKeys(IReadOnlyDictionary<string, Tensor> raw)
    {
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (rawKey, value) in raw)
        {
            var key = rawKey;
            // Wrappers nest in any order (model.module.encoder.blocks…): strip until none is left.
            while (Prefixes.FirstOrDefault(p => key.StartsWith(p, StringComparison.Ordinal)) is { } prefix)
            {
                key = key[prefix.Length..];
            }

            if (!IsEncoderKey(key))
            {
                continue;
            }

            if (key.EndsWith(".attn.qkv.bias", StringComparison.Ordinal))
            {
                var stem = key[..^"qkv.bias".Length];
                long inner = value.shape[0] / 3;
                result[stem + "q_bias"] = value[..(int)inner];
                result[stem + "v_bias"] = value[(int)(2 * inner)..];
                continue;
            }

            result[key] = value;
        }

        return result;
    }

    private static bool IsEncoderKey(string key)
        => key is "cls_token" or "pos_embed" or "norm.weight" or "norm.bias"
           || key.StartsWith("patch_embed.", StringComparison.Ordinal)
           || key.StartsWith("blocks.", StringComparison.Ordinal);

    // TorchSharp.PyBridge's public PyTorchUnpickler.UnpickleStateDict reads torch.save's zip + pickle format into a
    // table of key → tensor with an unpickler that only rebuilds tensors and dictionaries (nothing in the file runs).
    // The key remapping above then works on that table; BootMaeEncoderTests.MaeStyleWeightsMatchPyTorch pins the result
    // against PyTorch for PyBridge 1.4.4.
    private static Dictionary<string, Tensor> UnpickleStateDict(Stream stream)
    {
        System.Collections.Hashtable table;
        try
        {
            table = PyTorchUnpickler.UnpickleStateDict(stream, leaveOpen: true);
        }
        catch (Exception ex) when (ex is not (OutOfMemoryException or InvalidDataException))
        {
            // Not a zip, an unknown pickle opcode or class, a truncated storage…: all mean "not a state_dict file".
            throw new InvalidDataException(ex.Message, ex);
        }

        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        var others = new List<string>();
        foreach (System.Collections.DictionaryEntry entry in table)
        {
            if (entry.Key is string key && entry.Value is Tensor value)
            {
                result[key] = value;
            }
            else
            {
                others.Add(entry.Value is System.Collections.IDictionary ? $"'{entry.Key}' (a dictionary)" : $"'{entry.Key}'");
            }
        }

        if (result.Count > 0)
        {
            return result;
        }

        others.Sort(StringComparer.Ordinal);
        throw new InvalidDataException(others.Count == 0
            ? "the file holds an empty dictionary"
            : $"the file holds no tensors at its top level, only {string.Join(", ", others.Take(8))}{(others.Count > 8 ? ", …" : string.Empty)}; is the state_dict nested under a key such as 'model'?");
    }
}
