using System.Security.Cryptography;
using System.Text.Json;

namespace Microsoft.ML.BootMae.Training;

/// <summary>Where a run stands: what a checkpoint records besides the weights.</summary>
internal sealed record TrainingPosition(long Step, int Epoch, long StepInEpoch, long TotalSteps, int Seed);

/// <summary>
/// The checkpoint machinery shared by pretraining and fine-tuning: one folder per checkpoint, <c>step-00000123/</c>,
/// holding named files and <c>manifest.json</c> with the format, the position, the architecture, a fingerprint of the
/// settings that shape the run, and a SHA-256 of each file.
/// </summary>
/// <remarks>
/// Writes are atomic: everything goes to a hidden temporary folder that is renamed into place only when complete,
/// so a crash or a cancel never leaves a torn checkpoint, and the newest complete one stays usable.
/// </remarks>
internal static class CheckpointFolder
{
    private const string Prefix = "step-";

    // Checkpoint folder names: step-00000123, or step-00000123-1a2b3c4d beside another run's checkpoint of that step.
    private const string NamePattern = Prefix + @"\d+(-[0-9a-f]{8})?";

    /// <summary>
    /// Writes the files and the manifest atomically, then prunes this run's older checkpoints so that <paramref name="keep"/>
    /// remain, the new one included. Only checkpoints whose manifest has this format, version, architecture and fingerprint and
    /// whose files check out are pruned or count toward <paramref name="keep"/>: another run's, another format's and damaged
    /// ones sharing the folder are never deleted (issue 10: a second run's pruning used to delete the first's, or its own).
    /// </summary>
    public static string Save(string directory, string format, int version, TrainingPosition position, BootMaeArchitecture architecture,
        string settingsFingerprint, IReadOnlyList<(string Name, Action<BinaryWriter> Write)> files, int keep)
    {
        Directory.CreateDirectory(directory);
        var name = $"{Prefix}{position.Step:D8}";
        var final = Path.Combine(directory, name);
        if (Directory.Exists(final) && !IsThisRun(final, format, version, architecture, settingsFingerprint))
        {
            // Another run (or a damaged checkpoint) holds this step's name: keep it and write beside it. Names still sort by step.
            name += "-" + Convert.ToHexString(SHA256.HashData(System.Text.Encoding.UTF8.GetBytes($"{format}|{settingsFingerprint}")))[..8].ToLowerInvariant();
            final = Path.Combine(directory, name);
        }

        // A checkpoint a crashed writer had moved aside comes back first; then staging folders of crashed writers
        // (kill -9, power loss), which would otherwise stay forever.
        Persistence.DurableFiles.RestoreMovedAside(directory, NamePattern);
        Persistence.DurableFiles.SweepStale(directory, NamePattern);
        var temp = Persistence.DurableFiles.StagingPath(final);
        Directory.CreateDirectory(temp);
        try
        {
            foreach (var (file, write) in files)
            {
                WriteWith(Path.Combine(temp, file), write);
            }

            var manifest = new Manifest(format, version, position, architecture, settingsFingerprint,
                files.ToDictionary(f => f.Name, f => (string?)Hash(Path.Combine(temp, f.Name))));
            Persistence.DurableFiles.WriteAllBytes(Path.Combine(temp, "manifest.json"), JsonSerializer.SerializeToUtf8Bytes(manifest, new JsonSerializerOptions { WriteIndented = true }));
            Persistence.DurableFiles.FlushDirectory(temp);

            // Never delete-then-move: a crash between the two would lose this step's checkpoint. Swapped in one rename
            // where the system can, else the old one is moved aside and restored by the next run if the move-in never happens.
            Persistence.DurableFiles.ReplaceDirectory(temp, final);
            // Without this a power loss can undo the rename, or keep it with empty files.
            Persistence.DurableFiles.FlushDirectory(directory);
        }
        catch
        {
            if (Directory.Exists(temp))
            {
                Directory.Delete(temp, recursive: true);
            }

            throw;
        }

        // The new checkpoint takes the first slot and is never deleted; this run's others fill the rest, newest first.
        var ours = ListCheckpoints(directory)
            .Where(c => !string.Equals(c, final, StringComparison.Ordinal) && IsThisRun(c, format, version, architecture, settingsFingerprint));
        foreach (var old in ours.Skip(Math.Max(0, keep - 1)).ToList())
        {
            Directory.Delete(old, recursive: true);
        }

        return final;
    }

    /// <summary>
    /// The newest checkpoint folder of <paramref name="format"/> whose manifest and files check out and whose architecture
    /// and fingerprint match, or null; the others are reported through <c>log</c> and skipped. <c>settingsHint</c>
    /// names the fingerprinted settings in the message of a mismatch.
    /// </summary>
    public static (string Path, TrainingPosition Position)? FindLatestValid(string directory, string format, int version, BootMaeArchitecture architecture,
        string settingsFingerprint, string settingsHint, Action<string>? log)
    {
        if (!Directory.Exists(directory))
        {
            return null;
        }

        foreach (var restored in Persistence.DurableFiles.RestoreMovedAside(directory, NamePattern))
        {
            log?.Invoke($"Restored checkpoint '{restored}', which a crashed writer had moved aside while replacing it.");
        }

        foreach (var candidate in ListCheckpoints(directory))
        {
            try
            {
                var manifest = ReadManifest(candidate, format, version);
                if (manifest.Architecture != architecture)
                {
                    throw new InvalidDataException($"it was made with a different architecture ({manifest.Architecture}).");
                }

                if (manifest.SettingsFingerprint != settingsFingerprint)
                {
                    throw new InvalidDataException($"it was made with different run settings ({settingsHint}); resume needs the same ones.");
                }

                return (candidate, manifest.Position!);
            }
            catch (Exception ex) when (ex is InvalidDataException or IOException or JsonException)
            {
                log?.Invoke($"Skipping checkpoint '{candidate}': {ex.Message}");
            }
        }

        return null;
    }

    /// <summary>
    /// Reads one file of a checkpoint found by <see cref="FindLatestValid"/>: only a file that <c>manifest.json</c> lists,
    /// and only after its SHA-256 matches, checked on the same open handle the reader then reads (a file planted beside the
    /// manifest, or changed after the checkpoint was validated, is never read).
    /// </summary>
    /// <exception cref="InvalidDataException">The manifest does not list <paramref name="file"/>, or the file does not match its SHA-256.</exception>
    public static void ReadWith(string checkpoint, string file, Action<BinaryReader> read)
    {
        Manifest manifest;
        try
        {
            manifest = JsonSerializer.Deserialize<Manifest>(File.ReadAllBytes(Path.Combine(checkpoint, "manifest.json")))
                ?? throw new InvalidDataException("empty manifest.");
        }
        catch (JsonException ex)
        {
            throw new InvalidDataException($"Checkpoint '{checkpoint}': manifest.json is not valid JSON ({ex.Message}).", ex);
        }

        string? expected = null;
        if (!IsPlainFileName(file) || manifest.Sha256 is null || !manifest.Sha256.TryGetValue(file, out expected) || expected is null)
        {
            throw new InvalidDataException($"Checkpoint '{checkpoint}': manifest.json does not list the file '{file}' with a SHA-256; it is not read.");
        }

        using var stream = File.OpenRead(Path.Combine(checkpoint, file));
        var actual = Convert.ToHexString(SHA256.HashData(stream));
        if (!string.Equals(actual, expected, StringComparison.OrdinalIgnoreCase))
        {
            throw new InvalidDataException($"Checkpoint '{checkpoint}': {file} does not match its SHA-256 in manifest.json (changed after it was written); it is not read.");
        }

        stream.Position = 0;
        using var reader = new BinaryReader(stream, System.Text.Encoding.UTF8, leaveOpen: true);
        read(reader);
    }

    /// <summary>
    /// The checkpoint <paramref name="path"/> names: a checkpoint folder (holding <c>manifest.json</c>), or a checkpoint directory,
    /// whose newest checkpoint of <paramref name="format"/> with a manifest and files that check out is taken. Returns its folder,
    /// architecture and position.
    /// </summary>
    /// <exception cref="InvalidDataException">No such checkpoint, or the one named is damaged or of another format.</exception>
    public static (string Path, BootMaeArchitecture Architecture, TrainingPosition Position) Resolve(string path, string format, int version)
    {
        if (File.Exists(Path.Combine(path, "manifest.json")))
        {
            var manifest = ReadManifest(path, format, version);
            return (path, manifest.Architecture!, manifest.Position!);
        }

        if (!Directory.Exists(path))
        {
            throw new InvalidDataException($"'{path}' is neither a checkpoint folder (with manifest.json) nor a folder of checkpoints.");
        }

        var skipped = new List<string>();
        foreach (var candidate in ListCheckpoints(path))
        {
            try
            {
                var manifest = ReadManifest(candidate, format, version);
                return (candidate, manifest.Architecture!, manifest.Position!);
            }
            catch (Exception ex) when (ex is InvalidDataException or IOException or JsonException)
            {
                skipped.Add($"{Path.GetFileName(candidate)}: {ex.Message}");
            }
        }

        throw new InvalidDataException($"'{path}' holds no usable {format} checkpoint (step-* folder with a valid manifest.json)" +
            (skipped.Count > 0 ? $"; skipped {string.Join("; ", skipped)}." : "."));
    }

    // Whether a checkpoint folder is one of this run's, complete and undamaged: only those may be pruned or take keep slots.
    private static bool IsThisRun(string path, string format, int version, BootMaeArchitecture architecture, string settingsFingerprint)
    {
        try
        {
            var manifest = ReadManifest(path, format, version);
            return manifest.Architecture == architecture && manifest.SettingsFingerprint == settingsFingerprint;
        }
        catch (Exception ex) when (ex is InvalidDataException or IOException or JsonException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    private static Manifest ReadManifest(string path, string format, int version)
    {
        var manifest = JsonSerializer.Deserialize<Manifest>(File.ReadAllBytes(Path.Combine(path, "manifest.json")))
            ?? throw new InvalidDataException("empty manifest.");
        if (manifest.Format != format || manifest.Version != version)
        {
            throw new InvalidDataException($"unknown checkpoint format {manifest.Format} v{manifest.Version} (expected {format} v{version}).");
        }

        // JSON null or a missing field deserializes to null: damaged, not a NullReferenceException later.
        string? missing = manifest.Position is null ? nameof(Manifest.Position)
            : manifest.Architecture is null ? nameof(Manifest.Architecture)
            : manifest.SettingsFingerprint is null ? nameof(Manifest.SettingsFingerprint)
            : manifest.Sha256 is null ? nameof(Manifest.Sha256)
            : null;
        if (missing is not null)
        {
            throw new InvalidDataException($"manifest.json has no '{missing}' (damaged).");
        }

        foreach (var (file, hash) in manifest.Sha256!)
        {
            if (!IsPlainFileName(file))
            {
                throw new InvalidDataException($"manifest.json field 'Sha256' names the file '{file}', which is not a plain file name inside the checkpoint folder.");
            }

            if (hash is null || !string.Equals(Hash(Path.Combine(path, file)), hash, StringComparison.OrdinalIgnoreCase))
            {
                throw new InvalidDataException($"{file} does not match its SHA-256 in manifest.json (damaged).");
            }
        }

        return manifest;
    }

    // Checkpoints hold flat files: no folders, no "..", no rooted or drive paths, so a manifest never reaches outside its folder.
    private static bool IsPlainFileName(string? file)
        => !string.IsNullOrWhiteSpace(file) && file is not ("." or "..") && !Path.IsPathRooted(file)
            && file.IndexOfAny(new[] { '/', '\\', ':', '\0' }) < 0;

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

    private static string Hash(string path)
    {
        using var stream = File.OpenRead(path);
        return Convert.ToHexString(SHA256.HashData(stream));
    }

    // Nullable because a hand-edited or truncated manifest may lack any of them (checked in ReadManifest).
    private sealed record Manifest(string? Format, int Version, TrainingPosition? Position, BootMaeArchitecture? Architecture,
        string? SettingsFingerprint, Dictionary<string, string?>? Sha256);
}
