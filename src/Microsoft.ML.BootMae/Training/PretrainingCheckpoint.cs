using System.Security.Cryptography;
using System.Text.Json;
using Microsoft.ML.BootMae.Modules;
using TorchSharp.Modules;

namespace Microsoft.ML.BootMae.Training;

/// <summary>Where a run stands: what a checkpoint records besides the weights.</summary>
internal sealed record TrainingPosition(long Step, int Epoch, long StepInEpoch, long TotalSteps, int Seed);

/// <summary>
/// Pretraining checkpoints: one folder per checkpoint, <c>step-00000123/</c>, holding the student, the teacher's
/// master weights and the optimizer state (TorchSharp's own format), and <c>manifest.json</c> with the position,
/// the architecture, the settings that shape the run, and a SHA-256 of each file.
/// </summary>
/// <remarks>
/// Writes are atomic: everything goes to a hidden temporary folder that is renamed into place only when complete,
/// so a crash or a cancel never leaves a torn checkpoint, and the newest complete one stays usable. Random state
/// needs no saving: every draw is seeded from (seed, epoch or step) (<see cref="Seeds"/>).
/// </remarks>
internal static class PretrainingCheckpoint
{
    public const string Format = "bootmae-pretraining-checkpoint";
    public const int Version = 1;
    private const string Prefix = "step-";
    private static readonly string[] Files = { "student.bin", "teacher.bin", "optimizer.bin" };

    public static string Save(string directory, TrainingPosition position, BootMaeArchitecture architecture, string settingsFingerprint,
        BootMaeNetwork student, MomentumTeacher? teacher, AdamW optimizer, int keep)
    {
        Directory.CreateDirectory(directory);
        var name = $"{Prefix}{position.Step:D8}";
        var final = Path.Combine(directory, name);
        var temp = Path.Combine(directory, $".{name}.{Guid.NewGuid():N}.tmp");
        Directory.CreateDirectory(temp);
        try
        {
            WriteWith(Path.Combine(temp, "student.bin"), w => student.save(w));
            WriteWith(Path.Combine(temp, "teacher.bin"), w => teacher?.Encoder.save(w));
            WriteWith(Path.Combine(temp, "optimizer.bin"), w => optimizer.save_state_dict(w));
            var manifest = new Manifest(Format, Version, position, architecture, settingsFingerprint,
                Files.ToDictionary(f => f, f => Hash(Path.Combine(temp, f))));
            File.WriteAllBytes(Path.Combine(temp, "manifest.json"), JsonSerializer.SerializeToUtf8Bytes(manifest, new JsonSerializerOptions { WriteIndented = true }));
            if (Directory.Exists(final))
            {
                Directory.Delete(final, recursive: true);
            }

            Directory.Move(temp, final);
        }
        catch
        {
            if (Directory.Exists(temp))
            {
                Directory.Delete(temp, recursive: true);
            }

            throw;
        }

        foreach (var old in ListCheckpoints(directory).Skip(keep))
        {
            Directory.Delete(old, recursive: true);
        }

        return final;
    }

    /// <summary>The newest checkpoint folder whose manifest and files check out, or null; damaged ones are reported and skipped.</summary>
    public static (string Path, TrainingPosition Position)? FindLatestValid(string directory, BootMaeArchitecture architecture, string settingsFingerprint, Action<string>? log)
    {
        if (!Directory.Exists(directory))
        {
            return null;
        }

        foreach (var candidate in ListCheckpoints(directory))
        {
            try
            {
                var manifest = ReadManifest(candidate);
                if (manifest.Architecture != architecture)
                {
                    throw new InvalidDataException($"it was made with a different architecture ({manifest.Architecture}).");
                }

                if (manifest.SettingsFingerprint != settingsFingerprint)
                {
                    throw new InvalidDataException("it was made with different run settings (mode, targets, masking, epochs, steps or batch size); resume needs the same ones.");
                }

                return (candidate, manifest.Position);
            }
            catch (Exception ex) when (ex is InvalidDataException or IOException or JsonException)
            {
                log?.Invoke($"Skipping checkpoint '{candidate}': {ex.Message}");
            }
        }

        return null;
    }

    public static void Load(string path, BootMaeNetwork student, MomentumTeacher? teacher, AdamW optimizer)
    {
        ReadWith(Path.Combine(path, "student.bin"), r => student.load(r));
        if (teacher is not null)
        {
            ReadWith(Path.Combine(path, "teacher.bin"), r => teacher.Encoder.load(r));
            teacher.SyncAfterLoad();
        }

        ReadWith(Path.Combine(path, "optimizer.bin"), r => optimizer.load_state_dict(r));
    }

    private static Manifest ReadManifest(string path)
    {
        var manifest = JsonSerializer.Deserialize<Manifest>(File.ReadAllBytes(Path.Combine(path, "manifest.json")))
            ?? throw new InvalidDataException("empty manifest.");
        if (manifest.Format != Format || manifest.Version != Version)
        {
            throw new InvalidDataException($"unknown checkpoint format {manifest.Format} v{manifest.Version}.");
        }

        foreach (var (file, hash) in manifest.Sha256)
        {
            if (Hash(Path.Combine(path, file)) != hash)
            {
                throw new InvalidDataException($"{file} does not match its SHA-256 in manifest.json (damaged).");
            }
        }

        return manifest;
    }

    private static IEnumerable<string> ListCheckpoints(string directory)
        => Directory.GetDirectories(directory, Prefix + "*")
            .Where(d => !Path.GetFileName(d).StartsWith('.'))
            .OrderByDescending(d => Path.GetFileName(d), StringComparer.Ordinal);

    private static void WriteWith(string path, Action<BinaryWriter> write)
    {
        using var stream = new FileStream(path, FileMode.CreateNew, FileAccess.Write);
        using (var writer = new BinaryWriter(stream, System.Text.Encoding.UTF8, leaveOpen: true))
        {
            write(writer);
        }

        stream.Flush(flushToDisk: true);
    }

    private static void ReadWith(string path, Action<BinaryReader> read)
    {
        using var stream = File.OpenRead(path);
        using var reader = new BinaryReader(stream, System.Text.Encoding.UTF8, leaveOpen: true);
        read(reader);
    }

    private static string Hash(string path)
    {
        using var stream = File.OpenRead(path);
        return Convert.ToHexString(SHA256.HashData(stream));
    }

    private sealed record Manifest(string Format, int Version, TrainingPosition Position, BootMaeArchitecture Architecture,
        string SettingsFingerprint, Dictionary<string, string> Sha256);
}
