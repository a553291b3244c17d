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
        var regex = new Regex($@"^\.(?:{targetPattern})\.(?:(?<pid>\d{{1,10}})\.)?[0-9a-f]{{32}}(?:\.[a-z]+)?\.tmp$", RegexOptions.CultureInvariant);
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
                var idle = now - LastTouchedUtc(entry);
                bool writerGone = match.Groups["pid"].Success
                    && int.TryParse(match.Groups["pid"].Value, NumberStyles.None, CultureInfo.InvariantCulture, out int pid)
                    && !IsRunning(pid);
                if (!(idle >= MaxAge || (writerGone && idle >= DeadWriterGrace)))
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
    /// Writes <paramref name="fullPath"/> atomically: <paramref name="write"/> fills a staging file beside it, which is
    /// flushed to the disk and then renamed over the target, so a crash leaves either the old file or the new one,
    /// never a half-written one (a leftover staging file is swept by the next write to the same place). The folder
    /// must exist.
    /// </summary>
    internal static void WriteAtomically(string fullPath, Action<Stream> write)
    {
        var directory = Path.GetDirectoryName(fullPath)!;
        SweepStale(directory, Regex.Escape(Path.GetFileName(fullPath)));
        var temp = StagingPath(fullPath);
        try
        {
            using (var stream = new FileStream(temp, FileMode.CreateNew, FileAccess.Write))
            {
                write(stream);
                stream.Flush(flushToDisk: true);
            }

            File.Move(temp, fullPath, overwrite: true);
            FlushDirectory(directory);
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
}
