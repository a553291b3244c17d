using System.Collections;
using System.Globalization;
using TorchSharp;
using TorchSharp.PyBridge;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Interop;

// Reads PyTorch weight files as plain data and picks the state_dict inside a training checkpoint; PyTorchWeights.Keys.cs
// maps its keys (official BootMAE / MAE / timm, or Hugging Face ViT / ViTMAE) onto VisionTransformerEncoder's (the official names).
internal static partial class PyTorchWeights
{
    private static readonly string[] StudentEntries = { "model", "state_dict", "module" };
    private static readonly string[] TeacherEntries = { "model_ema", "state_dict", "module" };

    // .safetensors: parsed directly. .pth/.pt: torch.save's zip format through TorchSharp.PyBridge, whose unpickler
    // rebuilds tensors, dictionaries, lists and numbers and turns any other class (an argparse.Namespace) into a plain
    // dictionary of its fields: nothing from the file is executed. Returns the chosen state_dict (raw keys) and every
    // tensor the file held (optimizer moments included), which the caller disposes, and what the checkpoint's 'args'
    // say about the input normalisation.
    public static (Dictionary<string, Tensor> StateDict, List<Tensor> Owned, TrainingArgs Args) Read(string path, BootMaeCheckpointModel model, Action<string>? log)
    {
        var extension = Path.GetExtension(path).ToLowerInvariant();
        if (extension == ".safetensors")
        {
            var flat = Safetensors.Load(path);
            try
            {
                return (SelectFlat(flat, model, path, log), flat.Values.ToList(), TrainingArgs.FromMetadata(Safetensors.ReadMetadata(path)));
            }
            catch
            {
                foreach (var t in flat.Values)
                {
                    t.Dispose();
                }

                throw;
            }
        }

        if (extension is not (".pth" or ".pt" or ".bin" or ".ckpt"))
        {
            throw new InvalidDataException($"'{path}': unknown weights format '{extension}'. Use .safetensors, or a .pth/.pt file written by torch.save.");
        }

        var table = Unpickle(path, "It must be a torch.save file in the zip format holding a state_dict, or a training checkpoint with one " +
            "under 'model' / 'model_ema' / 'state_dict'; or convert it to .safetensors.");

        var owned = new List<Tensor>();
        CollectTensors(table, owned, 0);
        try
        {
            return (SelectNested(table, model, path, log), owned, TrainingArgs.From(table));
        }
        catch
        {
            owned.ForEach(t => t.Dispose());
            throw;
        }
    }

    // Reads a torch.save zip as data: PyBridge's unpickler only rebuilds tensors, containers and plain values (unknown classes
    // become dictionaries), so nothing in the file runs. Any failure (not a zip, an unknown opcode, a whole pickled nn.Module,
    // a truncated storage) becomes an InvalidDataException naming the file; hint says what the file must be.
    public static Hashtable Unpickle(string path, string hint)
    {
        try
        {
            using var stream = File.OpenRead(path);
            return PyTorchUnpickler.UnpickleStateDict(stream, leaveOpen: true);
        }
        catch (Exception ex) when (ex is not OutOfMemoryException)
        {
            throw new InvalidDataException($"'{path}' could not be read as a torch.save file ({ex.Message}). {hint}", ex);
        }
    }

    // The training script's settings that decide the input normalisation, from an official checkpoint's 'args'
    // (an argparse.Namespace): BootMAE's and BEiT's --imagenet_default_mean_and_std (absent: not recorded), and the
    // model name (MAE's main_pretrain.py names its models mae_vit_…).
    internal readonly record struct TrainingArgs(bool? ImageNetDefaultMeanAndStd, string? ModelName, BootMaeNormalization? Recorded = null)
    {
        // Metadata keys BootMaeEncoder.ExportSafetensors writes: the per-channel mean and std, comma-separated.
        public const string MeanKey = "bootmae.normalization.mean";
        public const string StdKey = "bootmae.normalization.std";

        public static TrainingArgs From(Hashtable checkpoint) =>
            checkpoint["args"] is IDictionary args && IsObject(args)
                ? new TrainingArgs(args["imagenet_default_mean_and_std"] as bool?, args["model"] as string)
                : default;

        public static TrainingArgs FromMetadata(IReadOnlyDictionary<string, string> metadata)
        {
            if (!metadata.TryGetValue(MeanKey, out var mean) || !metadata.TryGetValue(StdKey, out var std))
            {
                return default;
            }

            static double[]? Parse(string text)
            {
                var parts = text.Split(',');
                var values = new double[parts.Length];
                for (int i = 0; i < parts.Length; i++)
                {
                    if (!double.TryParse(parts[i], NumberStyles.Float, CultureInfo.InvariantCulture, out values[i]))
                    {
                        return null;
                    }
                }

                return values;
            }

            return Parse(mean) is { } m && Parse(std) is { } s ? new TrainingArgs(null, null, new BootMaeNormalization { Mean = m, Std = s }) : default;
        }

        public static Dictionary<string, string> ToMetadata(BootMaeNormalization normalization) => new(StringComparer.Ordinal)
        {
            [MeanKey] = string.Join(',', normalization.Mean.Select(v => v.ToString("R", CultureInfo.InvariantCulture))),
            [StdKey] = string.Join(',', normalization.Std.Select(v => v.ToString("R", CultureInfo.InvariantCulture))),
        };
    }

    // A safetensors file is flat: an export of a whole checkpoint keeps the teacher under 'model_ema.' keys.
    private static Dictionary<string, Tensor> SelectFlat(Dictionary<string, Tensor> flat, BootMaeCheckpointModel model, string path, Action<string>? log)
    {
        const string Ema = "model_ema.";
        bool hasEma = flat.Keys.Any(k => k.StartsWith(Ema, StringComparison.Ordinal));
        if (model == BootMaeCheckpointModel.Teacher)
        {
            if (!hasEma)
            {
                throw new InvalidDataException($"'{path}' holds no teacher: none of its {flat.Count} keys starts with 'model_ema.'. Import the student (Model = Student), or a file that holds the teacher.");
            }

            log?.Invoke($"FromPyTorch: took the teacher (keys under 'model_ema.') of '{path}'.");
            return flat.Where(kv => kv.Key.StartsWith(Ema, StringComparison.Ordinal)).ToDictionary(kv => kv.Key[Ema.Length..], kv => kv.Value, StringComparer.Ordinal);
        }

        if (hasEma)
        {
            log?.Invoke($"FromPyTorch: took the student of '{path}'; it also holds a teacher under 'model_ema.' (Model = Teacher takes it).");
        }

        return flat.Where(kv => !kv.Key.StartsWith(Ema, StringComparison.Ordinal)).ToDictionary(kv => kv.Key, kv => kv.Value, StringComparer.Ordinal);
    }

    // Descends from the checkpoint's top level to the first dictionary that holds tensors: official BootMAE / MAE
    // files keep the student under 'model' and the teacher under 'model_ema', next to 'optimizer', 'epoch', 'scaler'
    // and 'args' (an argparse.Namespace), which are left alone.
    private static Dictionary<string, Tensor> SelectNested(Hashtable table, BootMaeCheckpointModel model, string path, Action<string>? log)
    {
        IDictionary current = table;
        var where = new List<string>();
        bool tookTeacher = false;
        for (int depth = 0; depth < 8; depth++)
        {
            var tensors = current.Cast<DictionaryEntry>().Where(e => e.Key is string && e.Value is Tensor).ToList();
            if (tensors.Count > 0)
            {
                if (model == BootMaeCheckpointModel.Teacher && !tookTeacher)
                {
                    throw new InvalidDataException(
                        $"'{path}' holds one state_dict{At(where)} and no teacher ('model_ema'). Import the student (Model = Student), or the checkpoint that holds 'model_ema'.");
                }

                if (where.Count > 0)
                {
                    log?.Invoke($"FromPyTorch: took the {(tookTeacher ? "teacher" : "student")} state_dict{At(where)} of '{path}'{Siblings(table, where[0])}.");
                }

                return tensors.ToDictionary(e => (string)e.Key, e => (Tensor)e.Value!, StringComparer.Ordinal);
            }

            var names = model == BootMaeCheckpointModel.Teacher && !tookTeacher ? TeacherEntries : StudentEntries;
            var next = names.FirstOrDefault(n => current.Contains(n) && current[n] is IDictionary d && !IsObject(d));
            if (next is null)
            {
                throw new InvalidDataException(
                    $"'{path}' holds no {(model == BootMaeCheckpointModel.Teacher ? "teacher" : "encoder")} weights{At(where)}: it has {DescribeEntries(current)}. " +
                    (model == BootMaeCheckpointModel.Teacher && !tookTeacher
                        ? "The teacher is looked for under 'model_ema' (official BootMAE checkpoints); take the student with Model = Student."
                        : "Expected a state_dict of tensors, or one under 'model', 'state_dict' or 'module' (or 'model_ema' for Model = Teacher)."));
            }

            tookTeacher |= next == "model_ema";
            where.Add(next);
            current = (IDictionary)current[next]!;
        }

        throw new InvalidDataException($"'{path}': the state_dict is nested more than 8 levels deep{At(where)}.");
    }

    private static string At(List<string> where) => where.Count == 0 ? " at its top level" : $" under {string.Join(" → ", where.Select(w => $"'{w}'"))}";

    private static string Siblings(Hashtable table, string taken)
    {
        var rest = table.Keys.Cast<object>().Select(k => k.ToString()!).Where(k => k != taken).OrderBy(k => k, StringComparer.Ordinal).ToList();
        var hint = taken != "model_ema" && table.ContainsKey("model_ema") ? "; Model = Teacher takes 'model_ema'" : string.Empty;
        return rest.Count == 0 ? string.Empty : $" (also there, not used: {string.Join(", ", rest.Select(k => $"'{k}'"))}{hint})";
    }

    // "'args' (an object of class argparse.Namespace), 'epoch' (an int), 'optimizer' (a dictionary of 2 entries)…"
    private static string DescribeEntries(IDictionary dictionary)
    {
        var entries = dictionary.Cast<DictionaryEntry>()
            .Select(e => $"'{e.Key}' ({Describe(e.Value)})")
            .OrderBy(s => s, StringComparer.Ordinal)
            .ToList();
        return entries.Count == 0 ? "an empty dictionary" : string.Join(", ", entries.Take(12)) + (entries.Count > 12 ? $", … ({entries.Count} entries)" : string.Empty);
    }

    private static string Describe(object? value) => value switch
    {
        null => "None",
        Tensor t => $"a tensor [{string.Join(", ", t.shape)}]",
        IDictionary d when IsObject(d) => $"an object of class {d["__class__"]}",
        IDictionary d => $"a dictionary of {d.Count} entries",
        string => "a string",
        bool => "a bool",
        int or long => "an int",
        double or float => "a float",
        ICollection c => $"a list of {c.Count}",
        _ => $"a {value.GetType().Name}",
    };

    // An instance of a Python class other than dict (argparse.Namespace): the unpickler's ClassDict, which records it.
    private static bool IsObject(IDictionary d) => d.Contains("__class__") && d["__class__"] is string;

    private static void CollectTensors(object? value, List<Tensor> into, int depth)
    {
        if (depth > 64)
        {
            return;
        }

        switch (value)
        {
            case Tensor t:
                into.Add(t);
                break;
            case IDictionary d:
                foreach (DictionaryEntry e in d)
                {
                    CollectTensors(e.Value, into, depth + 1);
                }

                break;
            case IEnumerable list when value is not string:
                foreach (var item in list)
                {
                    CollectTensors(item, into, depth + 1);
                }

                break;
        }
    }
}
