using Microsoft.ML.BootMae.Modules;
using TorchSharp.Modules;

namespace Microsoft.ML.BootMae.Training;

/// <summary>
/// Pretraining checkpoints (<see cref="CheckpointFolder"/>): the student, the teacher's master weights and the
/// optimizer state in TorchSharp's AdamW format (<see cref="OwnedAdamW"/>). Random state needs no saving: every draw is seeded from
/// (seed, epoch or step) (<see cref="Seeds"/>).
/// </summary>
internal static class PretrainingCheckpoint
{
    public const string Format = "bootmae-pretraining-checkpoint";
    public const int Version = 1;
    private const string SettingsHint = "mode, targets, masking, epochs, steps or batch size";

    public static string Save(string directory, TrainingPosition position, BootMaeArchitecture architecture, string settingsFingerprint,
        BootMaeNetwork student, MomentumTeacher? teacher, OwnedAdamW optimizer, int keep)
        => CheckpointFolder.Save(directory, Format, Version, position, architecture, settingsFingerprint, new (string, Action<BinaryWriter>)[]
        {
            ("student.bin", w => student.save(w)),
            ("teacher.bin", w => teacher?.Encoder.save(w)),
            ("optimizer.bin", w => optimizer.Save(w)),
        }, keep);

    /// <summary>The newest checkpoint folder whose manifest and files check out, or null; damaged ones are reported and skipped.</summary>
    public static (string Path, TrainingPosition Position)? FindLatestValid(string directory, BootMaeArchitecture architecture, string settingsFingerprint, Action<string>? log)
        => CheckpointFolder.FindLatestValid(directory, Format, Version, architecture, settingsFingerprint, SettingsHint, log);

    public static void Load(string path, BootMaeNetwork student, MomentumTeacher? teacher, OwnedAdamW optimizer)
    {
        CheckpointFolder.ReadWith(path, "student.bin", r => student.load(r));
        if (teacher is not null)
        {
            CheckpointFolder.ReadWith(path, "teacher.bin", r => teacher.Encoder.load(r));
            teacher.SyncAfterLoad();
        }

        CheckpointFolder.ReadWith(path, "optimizer.bin", r => optimizer.Load(r));
    }
}
