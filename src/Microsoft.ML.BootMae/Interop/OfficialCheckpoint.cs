using System.Collections;
using System.Collections.Specialized;
using System.Globalization;
using System.Text.Json;
using Microsoft.ML.BootMae.Modules;
using Microsoft.ML.BootMae.Training;
using TorchSharp;
using TorchSharp.PyBridge;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Interop;

/// <summary>
/// Checkpoint-level interop with the official BootMAE code (LightDXY/BootMAE, <c>run_pretraining.py</c>): a pretraining
/// run's student, teacher, optimizer and epoch in the layout that its <c>utils.save_model</c> writes and its
/// <c>utils.auto_load_model</c> (<c>--resume</c>) reads, and the way back into <see cref="BootMaePretrainer"/>.
/// </summary>
/// <remarks>
/// The file is a dict with <c>model</c> (the whole <c>VisionTransformerForMaskedImageModeling</c> state_dict, loaded
/// there with <c>load_state_dict</c>, strict), <c>model_ema</c> (what <c>timm.utils.get_state_dict(ModelEma)</c> saves:
/// the state_dict of the EMA copy of that whole module), <c>optimizer</c> (torch's AdamW <c>state_dict</c> for the two
/// groups of the official <c>create_adamw_optimizer</c>, with the <c>lr_scale</c> its training loop reads), <c>epoch</c>
/// (the last finished epoch: the official script resumes at <c>epoch + 1</c>) and <c>args</c>. <c>args</c> is a plain
/// dict here, not the official argparse.Namespace: <c>--resume</c> never reads it, a Namespace would make the file
/// unloadable with <c>torch.load(weights_only=True)</c> (the default from torch 2.6), and this way the file holds only
/// dicts, lists, numbers, strings and tensors. Our teacher tracks only the encoder (<see cref="MomentumTeacher"/>), so
/// the decoder entries of <c>model_ema</c> are the student's; the official code never reads them (its teacher forward is
/// <c>get_feature</c>, the encoder only).
/// </remarks>
internal static class OfficialCheckpoint
{
    /// <summary>The <c>format</c> entry of the <c>.safetensors</c> twin's metadata.</summary>
    public const string Format = "bootmae-official-checkpoint";

    private const string ModelPrefix = "model.";
    private const string EmaPrefix = "model_ema.";
    internal const string ExpAvgPrefix = "optimizer.exp_avg.";
    internal const string ExpAvgSqPrefix = "optimizer.exp_avg_sq.";
    internal const string StepPrefix = "optimizer.step.";
    private const string EpochKey = "epoch";
    private const string PositionKey = "bootmae.position";

    /// <summary>
    /// Throws <see cref="InvalidOperationException"/> unless <paramref name="network"/> has exactly the official model's
    /// state_dict (see <see cref="OfficialLayout.Check"/>): only then can its run be exported or resumed from an official checkpoint.
    /// </summary>
    public static void CheckLayout(BootMaeNetwork network) => OfficialLayout.Check(network);

    /// <summary>
    /// Writes <paramref name="destination"/> (<c>.pth</c>, torch.save's zip format through TorchSharp.PyBridge) and its
    /// twin with the same tensors under flat names (<c>.safetensors</c>, same path and name), each atomically.
    /// </summary>
    /// <param name="destination">The <c>.pth</c> file.</param>
    /// <param name="student">The student (official layout, <see cref="CheckLayout"/>).</param>
    /// <param name="teacher">The teacher's encoder, or null for a run without one (model_ema then repeats the student).</param>
    /// <param name="optimizer">The run's AdamW (<see cref="ParameterGroups.CreateAdamW"/>).</param>
    /// <param name="position">Where the run stands.</param>
    /// <param name="log">Receives what was written and what the official code will do with it.</param>
    /// <returns>The two files written.</returns>
    public static (string Pth, string Safetensors) Export(string destination, BootMaeNetwork student, VisionTransformerEncoder? teacher,
        OwnedAdamW optimizer, TrainingPosition position, Action<string>? log)
    {
        CheckLayout(student);
        var a = student.Architecture;
        if (!string.Equals(Path.GetExtension(destination), ".pth", StringComparison.OrdinalIgnoreCase))
        {
            throw new ArgumentException($"'{destination}': the official checkpoint is a .pth file (its .safetensors twin is written beside it).", nameof(destination));
        }

        var groups = optimizer.ParamGroups;
        double weightDecay = groups.Count == 2 ? groups[0].WeightDecay : 0;
        if (groups.Count != 2 || groups[1].WeightDecay != 0)
        {
            throw new InvalidOperationException("The optimizer does not have the decay / no-decay groups of ParameterGroups.CreateAdamW.");
        }

        if (weightDecay == 0)
        {
            // create_adamw_optimizer skips its grouping when weight_decay is 0 and optimizes model.parameters() as one group,
            // frozen tables included: a different parameter numbering, which --resume would reject.
            throw new InvalidOperationException("WeightDecay is 0: the official create_adamw_optimizer then builds one parameter group over model.parameters(), " +
                "which this export does not write. Export a run with WeightDecay > 0 (the official default is 0.05).");
        }

        using var scope = NewDisposeScope();
        var studentState = student.ReferenceStateDict();
        var teacherState = teacher?.state_dict();
        var keys = OfficialLayout.StateKeys(a);
        var model = new OrderedDictionary(keys.Count);
        var ema = new OrderedDictionary(keys.Count);
        var flat = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var key in keys)
        {
            var s = HostCopy(studentState[key]);
            var e = teacherState is not null && teacherState.TryGetValue(key, out var t) ? HostCopy(t) : s;
            model.Add(key, s);
            ema.Add(key, e);
            flat[ModelPrefix + key] = s;
            flat[EmaPrefix + key] = e;
        }

        var optimizerState = OfficialOptimizerState.Export(a, student, optimizer, studentState, flat, out int withState);

        // The official 'epoch' is the last finished one; --resume starts at epoch + 1. A checkpoint taken inside an epoch
        // therefore resumes there at the start of that epoch.
        long epoch = position.Epoch - 1;
        var args = Args(a, weightDecay, position);
        var root = new OrderedDictionary
        {
            { "model", model },
            { "optimizer", optimizerState },
            { "epoch", epoch },
            { "args", args },
            { "model_ema", ema },
        };

        string pth = Path.GetFullPath(destination);
        string twin = Path.ChangeExtension(pth, ".safetensors");
        flat[EpochKey] = torch.tensor(epoch);
        flat[PositionKey] = torch.tensor(new[] { position.Step, position.Epoch, position.StepInEpoch, position.TotalSteps });
        Persistence.DurableFiles.WriteAtomically(pth, stream => PyTorchPickler.PickleStateDict(stream, root, leaveOpen: true));
        var metadata = new Dictionary<string, string>
        {
            ["format"] = Format,
            ["args"] = JsonSerializer.Serialize(ToPlain(args)),
        };
        Persistence.DurableFiles.WriteAtomically(twin, stream => Safetensors.Save(stream, flat, metadata));

        log?.Invoke(string.Format(CultureInfo.InvariantCulture,
            "Official BootMAE checkpoint written: '{0}' and '{1}' (epoch {2}: run_pretraining.py --resume starts at epoch {3}; {4} keys in model and model_ema, " +
            "optimizer moments of {5} parameters{6}).",
            pth, twin, epoch, epoch + 1, keys.Count, withState, teacher is null ? "; no teacher, so model_ema repeats the student" : string.Empty));
        if (position.StepInEpoch > 0)
        {
            log?.Invoke(string.Format(CultureInfo.InvariantCulture,
                "The checkpoint is {0} steps into epoch {1}; the official code resumes at the start of epoch {1}, so it trains those steps' share of that epoch again.",
                position.StepInEpoch, position.Epoch));
        }

        if (OfficialLayout.ModelName(a) is null)
        {
            log?.Invoke($"No official registered model has this architecture ({a}); run_pretraining.py --model only builds bootmae_base and bootmae_large, so register one with the configuration in args['bootmae'].");
        }

        return (pth, twin);
    }

    /// <summary>
    /// Loads an official-layout checkpoint (ours, a twin <c>.safetensors</c>, or one the official code wrote) into a
    /// pretraining run: the student strictly, the teacher's encoder from <c>model_ema</c>, the AdamW moments, and the
    /// position. Returns where the run continues.
    /// </summary>
    /// <exception cref="InvalidDataException">The file cannot be read, or does not fit this run (the message names the key or group).</exception>
    /// <exception cref="InvalidOperationException">The checkpoint's epoch leaves nothing of this run to train.</exception>
    public static TrainingPosition Load(string path, BootMaeNetwork student, MomentumTeacher? teacher, bool loadTeacher, OwnedAdamW optimizer,
        long stepsPerEpoch, long totalSteps, int seed, Action<string>? log)
    {
        CheckLayout(student);
        using var scope = NewDisposeScope();
        var state = Read(path);
        try
        {
            student.LoadReferenceStateDict(state.Model, strict: true);
        }
        catch (ArgumentException ex)
        {
            throw new InvalidDataException($"'{path}': its 'model' does not fit this run's network ({student.Architecture}): {ex.Message} " +
                "Use the architecture the checkpoint was trained with.", ex);
        }

        string teacherNote;
        if (teacher is null)
        {
            teacherNote = "this run has no teacher";
        }
        else if (!loadTeacher)
        {
            teacherNote = "the frozen TeacherEncoder is kept";
        }
        else
        {
            var source = state.Ema ?? state.Model;
            var encoderKeys = teacher.Encoder.state_dict().Keys.ToHashSet(StringComparer.Ordinal);
            var weights = source.Where(kv => encoderKeys.Contains(kv.Key)).ToDictionary(kv => kv.Key, kv => kv.Value);
            EncoderWeights.Load(teacher.Encoder, weights, strict: true, source: $"'{path}' ({(state.Ema is null ? "model" : "model_ema")})");
            teacher.SyncAfterLoad();
            teacherNote = state.Ema is null ? "no model_ema in the file, so the teacher starts as the student's encoder" : "teacher from model_ema";
        }

        int moments = 0;
        if (state.Optimizer is { } saved)
        {
            var index = OfficialOptimizerState.OurIndex(student);
            foreach (var (name, (step, expAvg, expAvgSq)) in saved)
            {
                if (!index.TryGetValue(name, out int i))
                {
                    throw new InvalidDataException($"'{path}': optimizer state for '{name}', which this network does not train.");
                }

                optimizer.SetState(i, step, expAvg, expAvgSq);
                moments++;
            }
        }

        var position = Position(path, state, stepsPerEpoch, totalSteps, seed);
        log?.Invoke(string.Format(CultureInfo.InvariantCulture,
            "Initial state from '{0}': student, {1}, optimizer moments of {2} parameters{3}; continuing at step {4} (epoch {5}).",
            path, teacherNote, moments, state.Optimizer is null ? " (none in the file: fresh AdamW)" : string.Empty, position.Step, position.Epoch));
        return position;
    }

    // What a checkpoint file holds, under the official names. Position is ours (exact, the .pth's args or the twin's
    // tensor), only present when the file was written by Export and not re-saved by the official code since.
    private sealed record State(Dictionary<string, Tensor> Model, Dictionary<string, Tensor>? Ema,
        Dictionary<string, (long Step, Tensor ExpAvg, Tensor ExpAvgSq)>? Optimizer, long? Epoch, long[]? ExactPosition);

    private static State Read(string path)
    {
        if (!File.Exists(path))
        {
            throw new InvalidDataException($"'{path}' does not exist: InitialState needs a .pth or .safetensors checkpoint in the official BootMAE layout.");
        }

        var extension = Path.GetExtension(path).ToLowerInvariant();
        if (extension == ".safetensors")
        {
            return ReadFlat(path, Safetensors.Load(path));
        }

        if (extension is not (".pth" or ".pt" or ".ckpt" or ".bin"))
        {
            throw new InvalidDataException($"'{path}': unknown checkpoint format '{extension}'. Use the .pth (torch.save) or .safetensors file.");
        }

        var root = PyTorchWeights.Unpickle(path, "Use the .pth written by ExportOfficialCheckpoint or the official run_pretraining.py.");

        if (root["model"] is not IDictionary modelTable)
        {
            throw new InvalidDataException($"'{path}' has no 'model' dictionary (top-level keys: {string.Join(", ", root.Keys.Cast<object>().Select(k => $"'{k}'").OrderBy(k => k, StringComparer.Ordinal).Take(10))}). " +
                "InitialState needs a whole pretraining checkpoint as run_pretraining.py saves it; an encoder alone goes to InitialEncoder (BootMaeEncoder.FromPyTorch).");
        }

        var model = Tensors(modelTable, path, "model");
        var ema = root["model_ema"] is IDictionary emaTable ? Tensors(emaTable, path, "model_ema") : null;
        long? epoch = root["epoch"] is { } e ? Convert.ToInt64(e, CultureInfo.InvariantCulture) : null;
        long[]? exact = null;
        if (root["args"] is IDictionary args && args["bootmae_position"] is IDictionary p)
        {
            exact = new[] { "step", "epoch", "step_in_epoch", "total_steps" }.Select(k => Convert.ToInt64(p[k], CultureInfo.InvariantCulture)).ToArray();
        }

        var optimizer = root["optimizer"] is IDictionary opt ? OfficialOptimizerState.FromTorch(opt, path, model) : null;
        return new State(model, ema, optimizer, epoch, exact);
    }

    private static State ReadFlat(string path, Dictionary<string, Tensor> flat)
    {
        Dictionary<string, Tensor> Prefixed(string prefix) => flat.Where(kv => kv.Key.StartsWith(prefix, StringComparison.Ordinal))
            .ToDictionary(kv => kv.Key[prefix.Length..], kv => kv.Value, StringComparer.Ordinal);

        var model = Prefixed(ModelPrefix);
        if (model.Count == 0)
        {
            throw new InvalidDataException($"'{path}' has no 'model.*' tensors; it is not the .safetensors twin of an official-layout checkpoint.");
        }

        var ema = Prefixed(EmaPrefix);
        var expAvg = Prefixed(ExpAvgPrefix);
        var expAvgSq = Prefixed(ExpAvgSqPrefix);
        var steps = Prefixed(StepPrefix);
        Dictionary<string, (long, Tensor, Tensor)>? optimizer = null;
        if (steps.Count > 0)
        {
            optimizer = new Dictionary<string, (long, Tensor, Tensor)>(StringComparer.Ordinal);
            foreach (var (name, step) in steps)
            {
                long count = step.item<long>();
                if (count == 0)
                {
                    continue; // never stepped: torch keeps no state for it either
                }

                if (!expAvg.TryGetValue(name, out var m) || !expAvgSq.TryGetValue(name, out var v))
                {
                    throw new InvalidDataException($"'{path}': '{StepPrefix}{name}' has no '{ExpAvgPrefix}{name}' or '{ExpAvgSqPrefix}{name}'.");
                }

                optimizer[name] = (count, m, v);
            }
        }

        long? epoch = flat.TryGetValue(EpochKey, out var e) ? e.item<long>() : null;
        long[]? exact = flat.TryGetValue(PositionKey, out var p) && p.numel() == 4 ? p.data<long>().ToArray() : null;
        return new State(model, ema.Count > 0 ? ema : null, optimizer, epoch, exact);
    }

    private static OrderedDictionary Args(BootMaeArchitecture a, double weightDecay, TrainingPosition position)
    {
        var fea = new ArrayList { a.ShallowBlock };
        if (a.DeepBlockIndex != a.ShallowBlock)
        {
            fea.Add(a.DeepBlockIndex);
        }

        return new OrderedDictionary
        {
            { "model", OfficialLayout.ModelName(a) ?? "custom (see bootmae)" },
            { "input_size", a.ImageSize },
            { "weight_decay", weightDecay },
            { "opt_betas", new ArrayList { ParameterGroups.Beta1, ParameterGroups.Beta2 } },
            { "opt_eps", ParameterGroups.Epsilon },
            { "model_ema", true },
            {
                "bootmae", new OrderedDictionary
                {
                    { "img_size", a.ImageSize }, { "patch_size", a.PatchSize }, { "in_chans", a.Channels }, { "embed_dim", a.EmbedDim },
                    { "depth", a.Depth }, { "num_heads", a.Heads }, { "mlp_ratio", a.MlpRatio }, { "decoder_depth", a.DecoderDepth },
                    { "decode_dim", a.RegressorDim }, { "fea_list", fea },
                }
            },
            {
                "bootmae_position", new OrderedDictionary
                {
                    { "step", position.Step }, { "epoch", position.Epoch }, { "step_in_epoch", position.StepInEpoch }, { "total_steps", position.TotalSteps },
                }
            },
        };
    }

    private static TrainingPosition Position(string path, State state, long stepsPerEpoch, long totalSteps, int seed)
    {
        TrainingPosition position;
        if (state.ExactPosition is [var step, var epoch, var inEpoch, var total]
            && total == totalSteps && state.Epoch == epoch - 1 && step == (epoch * stepsPerEpoch) + inEpoch)
        {
            // Our own export, not continued elsewhere since, of a run of this length: its exact position, mid-epoch included.
            position = new TrainingPosition(step, (int)epoch, inEpoch, totalSteps, seed);
        }
        else if (state.Epoch is { } finished)
        {
            position = new TrainingPosition((finished + 1) * stepsPerEpoch, (int)(finished + 1), 0, totalSteps, seed);
        }
        else
        {
            return new TrainingPosition(0, 0, 0, totalSteps, seed);
        }

        if (position.Step >= totalSteps)
        {
            throw new InvalidOperationException(string.Format(CultureInfo.InvariantCulture,
                "'{0}' is at epoch {1} (step {2}), but this run has only {3} steps ({4} per epoch), so nothing is left to train. Raise MaxEpochs (or MaxSteps).",
                path, position.Epoch, position.Step, totalSteps, stepsPerEpoch));
        }

        return position;
    }

    private static Dictionary<string, Tensor> Tensors(IDictionary table, string path, string what)
    {
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (DictionaryEntry entry in table)
        {
            if (entry.Key is not string key || entry.Value is not Tensor value)
            {
                continue;
            }

            // DistributedDataParallel's wrapper prefix, if the module was saved without unwrapping.
            result[key.StartsWith("module.", StringComparison.Ordinal) ? key["module.".Length..] : key] = value;
        }

        if (result.Count == 0)
        {
            throw new InvalidDataException($"'{path}': '{what}' holds no tensors.");
        }

        return result;
    }

    // Float32, contiguous, on the CPU and owned by the caller's scope: what both writers need.
    internal static Tensor HostCopy(Tensor t) => t.detach().to(ScalarType.Float32).cpu().contiguous().clone();

    // The args dict as JSON for the .safetensors metadata.
    private static object? ToPlain(object? value) => value switch
    {
        OrderedDictionary d => d.Cast<DictionaryEntry>().ToDictionary(e => (string)e.Key, e => ToPlain(e.Value)),
        ArrayList l => l.Cast<object?>().Select(ToPlain).ToList(),
        _ => value,
    };
}
