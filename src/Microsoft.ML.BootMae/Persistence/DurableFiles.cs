using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.RegularExpressions;

namespace Microsoft.ML.BootMae.Persistence;

/// <summary>
/// Staging names, stale-temporary sweeping and flushes to disk for the library's atomic writes (checkpoint folders,
/// model zips, encoder files). A staging file or folder is named <c>.{target}.{pid}.{32 hex}[.{tag}].tmp</c> beside its
/// target, so a crash leaves it where the next write to the same place finds it, and the writer's process id says
/// whether anyone can still be writing it.
/// </summary>
internal static class DurableFiles
{
    /// <summary>A temporary whose writer process is gone is removed once it has been untouched this long (another host may share the folder).</summary>
    internal static readonly TimeSpan DeadWriterGrace = TimeSpan.FromMinutes(1);

    /// <summary>Any temporary of this library untouched this long is removed, whoever wrote it (covers reused ids and older names without one).</summary>
    internal static readonly TimeSpan MaxAge = TimeSpan.FromHours(24);

    /// <summary>A staging path beside <paramref name="target"/>: <c>.{name}.{pid}.{guid}[.{tag}].tmp</c>.</summary>
    internal static string StagingPath(string target, string? tag = null)
    {
        var full = Path.GetFullPath(target);
        var suffix = tag is null ? string.Empty : "." + tag;
        return Path.Combine(Path.GetDirectoryName(full)!, $".{Path.GetFileName(full)}.{Environment.ProcessId}.{Guid.NewGuid():N}{suffix}.tmp");
    }

    /// <summary>
    /// Deletes stale temporaries in <paramref name="directory"/> whose target name matches <paramref name="targetPattern"/>
    /// (a regular expression for the file name, e.g. <c>step-\d+</c>): only names this library writes, only when the
    /// writer process is gone (and the entry untouched for <see cref="DeadWriterGrace"/>) or the entry is older than
    /// <see cref="MaxAge"/>. Never throws: a temporary that cannot be removed now is left for the next sweep.
    /// </summary>
    /// <returns>The paths removed.</returns>
    internal static IReadOnlyList<string> SweepStale(string directory, string targetPattern, DateTime? nowUtc = null)
    {
        var removed = new List<string>();
        var now = nowUtc ?? DateTime.UtcNow;
        // Current names carry the writer's pid; the older ".{name}.{guid}.tmp" form has none and is swept by age alone.
        var regex = StagingName(targetPattern);
        IEnumerable<string> entries;
        try
        {
            entries = Directory.EnumerateFileSystemEntries(directory, ".*.tmp").ToList();
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return removed;
        }

        foreach (var entry in entries)
        {
            var match = regex.Match(Path.GetFileName(entry));
            if (!match.Success)
            {
                continue;
            }

            try
            {
                if (IsMovedAside(match) && !Exists(Path.Combine(directory, match.Groups["target"].Value)))
                {
                    // The only copy of its target (a crash between moving it aside and moving the new one in): RestoreMovedAside's, never the sweep's.
                    continue;
                }

                var idle = now - LastTouchedUtc(entry);
                if (!(idle >= MaxAge || (WriterGone(match) && idle >= DeadWriterGrace)))
                {
                    continue;
                }

                if (Directory.Exists(entry))
                {
                    Directory.Delete(entry, recursive: true);
                }
                else
                {
                    File.Delete(entry);
                }

                removed.Add(entry);
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                // In use or already gone: the next sweep tries again.
            }
        }

        return removed;
    }

    /// <summary>
    /// Puts the complete folder <paramref name="staged"/> in place of <paramref name="target"/> so that at no moment the
    /// target name is missing or half-written: on Linux by exchanging the two names in one <c>renameat2(RENAME_EXCHANGE)</c>,
    /// then deleting the old folder (now under the staging name, swept as a crash leftover if this process dies first).
    /// Where that call is unavailable (other systems, filesystems without it) the old folder is renamed aside as
    /// <c>.{target}.{pid}.{guid}.old.tmp</c> first; a crash before the new one is moved in leaves it there, and
    /// <see cref="RestoreMovedAside"/> puts it back (the sweep never removes it while its target is missing).
    /// </summary>
    internal static void ReplaceDirectory(string staged, string target)
    {
        if (!Directory.Exists(target))
        {
            Directory.Move(staged, target);
            return;
        }

        if (ForceMoveAsideForTests || !TryExchange(staged, target))
        {
            var aside = StagingPath(target, MovedAsideTag);
            Directory.Move(target, aside);
            try
            {
                Directory.Move(staged, target);
            }
            catch
            {
                Directory.Move(aside, target);
                throw;
            }

            staged = aside;
        }

        // `staged` now names the previous folder.
        try
        {
            Directory.Delete(staged, recursive: true);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            // Left for the next sweep: it carries this process's id and its target exists.
        }
    }

    /// <summary>
    /// Renames back the folders that <see cref="ReplaceDirectory"/> moved aside when its writer died before moving the
    /// new folder in: for each <c>.{target}.{pid}.{guid}.old.tmp</c> in <paramref name="directory"/> whose target matches
    /// <paramref name="targetPattern"/>, is missing, and whose writer process is gone. Never throws.
    /// </summary>
    /// <returns>The targets restored.</returns>
    internal static IReadOnlyList<string> RestoreMovedAside(string directory, string targetPattern)
    {
        var restored = new List<string>();
        var regex = StagingName(targetPattern);
        try
        {
            foreach (var entry in Directory.EnumerateDirectories(directory, ".*." + MovedAsideTag + ".tmp").ToList())
            {
                var match = regex.Match(Path.GetFileName(entry));
                if (!match.Success || !IsMovedAside(match) || !WriterGone(match))
                {
                    continue;
                }

                var target = Path.Combine(directory, match.Groups["target"].Value);
                if (!Exists(target))
                {
                    Directory.Move(entry, target);
                    restored.Add(target);
                }
            }
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            // Another writer got there first, or the folder is not ours to change: the next call tries again.
        }

        return restored;
    }

    /// <summary>
    /// Writes <paramref name="path"/> atomically: <paramref name="write"/> fills a staging file beside it, which is
    /// renamed over the target, so a reader or a crash sees either the old file or the new one, never a half-written
    /// one. The folder must exist. This is the library's one staged-file write (encoders, model zips, ONNX files,
    /// official checkpoints, pictures, the sample's files, the patched native library).
    /// </summary>
    /// <param name="path">The target file.</param>
    /// <param name="write">Fills the staging stream (opened read-write: a zip written in Create mode may read back what it wrote).</param>
    /// <param name="durable">When true (the default) a leftover staging file of an earlier crashed write is swept first, and the
    /// file and then the rename are flushed to the disk before returning. False keeps only the atomic rename, for many small
    /// files that can be made again (the sample's PNGs), where a sweep and two fsyncs per file would dominate.</param>
    /// <param name="keepUnixFileMode">Gives the new file the existing target's Unix permissions (an executable or shared library).</param>
    internal static void WriteAtomically(string path, Action<Stream> write, bool durable = true, bool keepUnixFileMode = false)
    {
        var fullPath = Path.GetFullPath(path);
        var directory = Path.GetDirectoryName(fullPath)!;
        if (durable)
        {
            SweepStale(directory, Regex.Escape(Path.GetFileName(fullPath)));
        }

        var temp = StagingPath(fullPath);
        try
        {
            using (var stream = new FileStream(temp, FileMode.CreateNew, FileAccess.ReadWrite))
            {
                write(stream);
                stream.Flush(flushToDisk: durable);
            }

            if (keepUnixFileMode && !OperatingSystem.IsWindows())
            {
                File.SetUnixFileMode(temp, File.GetUnixFileMode(fullPath));
            }

            File.Move(temp, fullPath, overwrite: true);
            if (durable)
            {
                FlushDirectory(directory);
            }
        }
        finally
        {
            if (File.Exists(temp))
            {
                File.Delete(temp);
            }
        }
    }

    /// <summary>Writes a file and flushes it to the disk before returning.</summary>
    internal static void WriteAllBytes(string path, byte[] bytes)
    {
        using var stream = new FileStream(path, FileMode.CreateNew, FileAccess.Write);
        stream.Write(bytes);
        stream.Flush(flushToDisk: true);
    }

    /// <summary>
    /// Flushes a directory's entries (a rename into it, files created in it) to the disk. On Linux and macOS .NET has
    /// no API for this, so it opens the directory read-only and calls fsync(2); on Windows it does nothing (NTFS
    /// journals renames, and a directory cannot be flushed through .NET). Failures are ignored: some filesystems
    /// refuse fsync on directories, and the data files themselves were already flushed.
    /// </summary>
    internal static void FlushDirectory(string directory)
    {
        if (!(OperatingSystem.IsLinux() || OperatingSystem.IsMacOS()))
        {
            return;
        }

        int fd = open(directory, 0 /* O_RDONLY */);
        if (fd < 0)
        {
            return;
        }

        try
        {
            _ = fsync(fd);
        }
        finally
        {
            _ = close(fd);
        }
    }

    /// <summary>Tests only: use the move-aside path of <see cref="ReplaceDirectory"/> even where the names can be exchanged.</summary>
    internal static bool ForceMoveAsideForTests { get; set; }

    private const string MovedAsideTag = "old";

    // Current names carry the writer's pid; the older ".{name}.{guid}.tmp" form has none and is swept by age alone.
    private static Regex StagingName(string targetPattern)
        => new($@"^\.(?<target>{targetPattern})\.(?:(?<pid>\d{{1,10}})\.)?[0-9a-f]{{32}}(?:\.(?<tag>[a-z]+))?\.tmp$", RegexOptions.CultureInvariant);

    private static bool IsMovedAside(Match match) => match.Groups["tag"].Value == MovedAsideTag && match.Groups["pid"].Success;

    private static bool WriterGone(Match match)
        => match.Groups["pid"].Success
            && int.TryParse(match.Groups["pid"].Value, NumberStyles.None, CultureInfo.InvariantCulture, out int pid)
            && !IsRunning(pid);

    private static bool Exists(string path) => Directory.Exists(path) || File.Exists(path);

    // Linux renameat2(2) with RENAME_EXCHANGE: both names must exist; they swap atomically. False where the system,
    // the C library or the filesystem does not offer it (ENOSYS, EINVAL, a missing entry point), so the caller falls back.
    private static bool TryExchange(string a, string b)
    {
        if (!OperatingSystem.IsLinux())
        {
            return false;
        }

        try
        {
            if (renameat2(AtFdCwd, a, AtFdCwd, b, RenameExchange) == 0)
            {
                return true;
            }
        }
        catch (EntryPointNotFoundException)
        {
            return false;
        }

        int errno = Marshal.GetLastPInvokeError();
        if (errno is ENOSYS or EINVAL or EPERM or EXDEV or ENOTSUP)
        {
            return false;
        }

        throw new IOException($"Cannot exchange '{a}' and '{b}': {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno}).");
    }

    private const int AtFdCwd = -100;
    private const uint RenameExchange = 2;
    private const int EPERM = 1;
    private const int EXDEV = 18;
    private const int EINVAL = 22;
    private const int ENOSYS = 38;
    private const int ENOTSUP = 95;

    // The newest write time of the entry and, for a folder, of everything in it: a writer still at work keeps it fresh.
    private static DateTime LastTouchedUtc(string entry)
    {
        if (!Directory.Exists(entry))
        {
            return File.GetLastWriteTimeUtc(entry);
        }

        var newest = Directory.GetLastWriteTimeUtc(entry);
        foreach (var file in Directory.EnumerateFileSystemEntries(entry, "*", SearchOption.AllDirectories))
        {
            var t = File.GetLastWriteTimeUtc(file);
            if (t > newest)
            {
                newest = t;
            }
        }

        return newest;
    }

    private static bool IsRunning(int pid)
    {
        if (pid == Environment.ProcessId)
        {
            return true;
        }

        if (OperatingSystem.IsLinux())
        {
            return Directory.Exists($"/proc/{pid}");
        }

        try
        {
            using var process = System.Diagnostics.Process.GetProcessById(pid);
            return !process.HasExited;
        }
        catch (ArgumentException)
        {
            return false;
        }
        catch (InvalidOperationException)
        {
            return false;
        }
    }

    [DllImport("libc", SetLastError = true, CharSet = CharSet.Ansi, BestFitMapping = false, ThrowOnUnmappableChar = true)]
    private static extern int open(string path, int flags);

    [DllImport("libc", SetLastError = true)]
    private static extern int fsync(int fd);

    [DllImport("libc", SetLastError = true)]
    private static extern int close(int fd);

    [DllImport("libc", SetLastError = true, CharSet = CharSet.Ansi, BestFitMapping = false, ThrowOnUnmappableChar = true)]
    private static extern int renameat2(int olddirfd, string oldpath, int newdirfd, string newpath, uint flags);
}
