using System.Text.Json;
using Microsoft.ML.BootMae.Interop;
using Microsoft.ML.BootMae.Modules;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Training;

/// <summary>
/// The part of a fine-tuning run's state that is neither weights nor optimizer: early stopping, the best epoch, and the
/// running sums of the current epoch (so a mid-epoch resume reports, and early-stops on, the same epoch loss).
/// <c>BestLoss</c> is null while no epoch has finished (JSON has no infinity).
/// </summary>
internal sealed record FineTuneProgress(double? BestLoss, int BestEpoch, int EpochsSinceBest, int LastCompletedEpoch,
    double EpochLossSum, long EpochCorrect, long EpochImages, bool HasBestWeights);

/// <summary>
/// Fine-tuning checkpoints (<see cref="CheckpointFolder"/>): the whole classifier (encoder, head, BatchNorm statistics)
/// and the AdamW state in TorchSharp's AdamW format (<see cref="OwnedAdamW"/>), <c>progress.json</c> (<see cref="FineTuneProgress"/>), and with
/// <see cref="FineTuneSettings.ReturnBestModel"/> the best epoch's weights as safetensors. Random state needs no
/// saving: every draw is seeded from (seed, step) (<see cref="Seeds"/>).
/// </summary>
internal static class FineTuneCheckpoint
{
    public const string Format = "bootmae-finetune-checkpoint";
    public const int Version = 1;
    private const string SettingsHint = "class count, head kind, source block, optimisation, augmentation, early stopping, epochs, steps, batch size or seed";
    private const string ModelFile = "model.bin";
    private const string OptimizerFile = "optimizer.bin";
    private const string ProgressFile = "progress.json";
    private const string BestFile = "best.safetensors";

    public static string Save(string directory, TrainingPosition position, BootMaeArchitecture architecture, string settingsFingerprint,
        ImageClassifier model, OwnedAdamW optimizer, FineTuneProgress progress, IReadOnlyDictionary<string, Tensor>? best, int keep)
    {
        var files = new List<(string, Action<BinaryWriter>)>
        {
            (ModelFile, w => model.save(w)),
            (OptimizerFile, w => optimizer.Save(w)),
            (ProgressFile, w => w.Write(JsonSerializer.SerializeToUtf8Bytes(progress))),
        };
        if (best is not null)
        {
            files.Add((BestFile, w => Safetensors.Save(w.BaseStream, best)));
        }

        return CheckpointFolder.Save(directory, Format, Version, position, architecture, settingsFingerprint, files, keep);
    }

    /// <summary>The newest checkpoint folder whose manifest and files check out, or null; damaged ones are reported and skipped.</summary>
    public static (string Path, TrainingPosition Position)? FindLatestValid(string directory, BootMaeArchitecture architecture, string settingsFingerprint, Action<string>? log)
        => CheckpointFolder.FindLatestValid(directory, Format, Version, architecture, settingsFingerprint, SettingsHint, log);

    /// <summary>Loads the weights and optimizer state in place; returns the progress and the best weights (CPU tensors the caller disposes) if saved.</summary>
    public static (FineTuneProgress Progress, Dictionary<string, Tensor>? Best) Load(string path, ImageClassifier model, OwnedAdamW optimizer)
    {
        FineTuneProgress? progress = null;
        CheckpointFolder.ReadWith(path, ProgressFile, r => progress = JsonSerializer.Deserialize<FineTuneProgress>(r.BaseStream));
        if (progress is null)
        {
            throw new InvalidDataException($"'{path}' has an empty {ProgressFile}.");
        }

        CheckpointFolder.ReadWith(path, ModelFile, r => model.load(r));
        CheckpointFolder.ReadWith(path, OptimizerFile, r => optimizer.Load(r));
        Dictionary<string, Tensor>? best = null;
        if (progress.HasBestWeights)
        {
            CheckpointFolder.ReadWith(path, BestFile, r => best = Safetensors.Load(r.BaseStream));
        }

        return (progress, best);
    }
}
