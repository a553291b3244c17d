using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.BootMae.Tests.Reliability;

/// <summary>What a child probe did: its exit code, its JSON lines (one per case), how long it ran, and what the limit saw.</summary>
internal sealed record ProbeRun(int ExitCode, IReadOnlyList<JsonObject> Lines, string Output, TimeSpan Wall, string Mechanism, long? PeakBytes, long OomKills)
{
    /// <summary>The line of the case named <paramref name="kind"/> whose path ends with <paramref name="pathEnd"/>.</summary>
    internal JsonObject Case(string kind, string pathEnd)
        => Lines.SingleOrDefault(l => (string?)l["case"] == kind && ((string?)l["path"])?.EndsWith(pathEnd, StringComparison.Ordinal) == true)
            ?? throw new AssertFailedException($"no line for case {kind} {pathEnd}; output:\n{Output}");
}

/// <summary>
/// Runs the benchmark app's hidden <c>reliability-probe</c> command (test/Microsoft.ML.BootMae.Benchmarks/ReliabilityProbe.cs)
/// as a child process under a memory limit. Where the test may create a memory cgroup (v2 <c>memory.max</c> or v1
/// <c>memory.limit_in_bytes</c>, under this process's own cgroup) the child runs in one: a hard limit on its resident
/// memory, enforced by the kernel's OOM killer. Elsewhere the child caps its own address space
/// (<c>setrlimit(RLIMIT_AS)</c> at its start-up size plus the limit) and the .NET heap (<c>DOTNET_GCHeapHardLimit</c>).
/// Set <c>BOOTMAE_TEST_MEMORY_LIMIT=rlimit</c> to force the second way.
/// </summary>
internal static class LimitedChild
{
    /// <summary>The limit the reliability tests use: 1 GiB, about 7 times what the probe needs (150 MB).</summary>
    internal const long Limit = 1L << 30;

    internal static ProbeRun Run(long limitBytes, TimeSpan timeout, IEnumerable<string> probeArgs, IDictionary<string, string>? environment = null)
    {
        bool forceRlimit = Environment.GetEnvironmentVariable("BOOTMAE_TEST_MEMORY_LIMIT") == "rlimit";
        using var cgroup = forceRlimit ? null : MemoryCgroup.TryCreate(limitBytes);
        var start = new ProcessStartInfo { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        if (cgroup is not null)
        {
            // The shell joins the cgroup, then becomes the child: nothing of the child runs outside the limit.
            start.FileName = "sh";
            foreach (var a in new[] { "-c", "echo $$ > \"$0\" && exec \"$@\"", cgroup.ProcsFile, "dotnet", BenchmarksDll(), "reliability-probe" })
            {
                start.ArgumentList.Add(a);
            }
        }
        else
        {
            start.FileName = "dotnet";
            foreach (var a in new[] { BenchmarksDll(), "reliability-probe", "limit-address-space", (limitBytes >> 20).ToString(CultureInfo.InvariantCulture) })
            {
                start.ArgumentList.Add(a);
            }

            start.Environment["DOTNET_GCHeapHardLimit"] = "0x" + (limitBytes / 2).ToString("X", CultureInfo.InvariantCulture);
        }

        foreach (var a in probeArgs)
        {
            start.ArgumentList.Add(a);
        }

        start.Environment["OMP_WAIT_POLICY"] = "PASSIVE";
        start.Environment["OMP_NUM_THREADS"] = "1";
        foreach (var (key, value) in environment ?? new Dictionary<string, string>())
        {
            start.Environment[key] = value;
        }

        var output = new System.Text.StringBuilder();
        var watch = Stopwatch.StartNew();
        using var child = Process.Start(start)!;
        child.OutputDataReceived += (_, e) => { lock (output) { output.AppendLine(e.Data); } };
        child.ErrorDataReceived += (_, e) => { lock (output) { output.AppendLine(e.Data); } };
        child.BeginOutputReadLine();
        child.BeginErrorReadLine();
        if (!child.WaitForExit(timeout))
        {
            child.Kill(entireProcessTree: true);
            child.WaitForExit();
            Assert.Fail($"the probe ran past {timeout}; output:\n{output}");
        }

        child.WaitForExit();
        watch.Stop();
        string text;
        lock (output)
        {
            text = output.ToString();
        }

        var lines = text.Split('\n').Select(l => l.Trim()).Where(l => l.StartsWith('{')).Select(l => JsonNode.Parse(l)!.AsObject()).ToList();
        return new ProbeRun(child.ExitCode, lines, text, watch.Elapsed,
            cgroup?.Description ?? $"RLIMIT_AS start-up size + {limitBytes >> 20} MiB, DOTNET_GCHeapHardLimit {limitBytes >> 21} MiB",
            cgroup?.PeakBytes, cgroup?.OomKills ?? 0);
    }

    /// <summary>The benchmark app built beside this test assembly (same configuration and framework).</summary>
    internal static string BenchmarksDll()
    {
        // test/Microsoft.ML.BootMae.Tests/bin/Release/net10.0 → test/Microsoft.ML.BootMae.Benchmarks/bin/Release/net10.0
        var here = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar));
        var path = Path.Combine(here.Parent!.Parent!.Parent!.Parent!.FullName, "Microsoft.ML.BootMae.Benchmarks", "bin", here.Parent.Name, here.Name, "Microsoft.ML.BootMae.Benchmarks.dll");
        Assert.IsTrue(File.Exists(path), $"build the solution first: {path} is missing");
        return path;
    }

    /// <summary>A memory cgroup below this process's own, removed on dispose.</summary>
    private sealed class MemoryCgroup : IDisposable
    {
        private readonly string _dir;
        private readonly bool _v2;

        private MemoryCgroup(string dir, bool v2, long limit)
        {
            (_dir, _v2) = (dir, v2);
            Description = $"{(v2 ? "cgroup v2 memory.max" : "cgroup v1 memory.limit_in_bytes")} = {limit >> 20} MiB, no swap ({dir})";
        }

        internal string ProcsFile => Path.Combine(_dir, "cgroup.procs");

        internal string Description { get; }

        /// <summary>Peak memory charged to the group (v2 memory.peak, v1 memory.max_usage_in_bytes; page cache included).</summary>
        internal long? PeakBytes => ReadLong(_v2 ? "memory.peak" : "memory.max_usage_in_bytes");

        /// <summary>Processes the kernel's OOM killer killed in the group.</summary>
        internal long OomKills
        {
            get
            {
                var file = Path.Combine(_dir, _v2 ? "memory.events" : "memory.oom_control");
                var line = File.Exists(file) ? File.ReadLines(file).FirstOrDefault(l => l.StartsWith("oom_kill ", StringComparison.Ordinal)) : null;
                return line is null ? 0 : long.Parse(line["oom_kill ".Length..], CultureInfo.InvariantCulture);
            }
        }

        internal static MemoryCgroup? TryCreate(long limit)
        {
            if (!OperatingSystem.IsLinux() || !File.Exists("/proc/self/cgroup"))
            {
                return null;
            }

            foreach (var line in File.ReadAllLines("/proc/self/cgroup"))
            {
                var parts = line.Split(':', 3);
                bool v2 = parts.Length == 3 && parts[0] == "0" && parts[1].Length == 0 && File.Exists("/sys/fs/cgroup/cgroup.controllers");
                bool v1 = parts.Length == 3 && parts[1].Split(',').Contains("memory");
                if (!v1 && !v2)
                {
                    continue;
                }

                var dir = (v2 ? "/sys/fs/cgroup" : "/sys/fs/cgroup/memory") + parts[2].TrimEnd('/') + $"/bootmae-probe-{Guid.NewGuid():N}";
                try
                {
                    Directory.CreateDirectory(dir);
                    var group = new MemoryCgroup(dir, v2, limit);
                    var limitFile = Path.Combine(dir, v2 ? "memory.max" : "memory.limit_in_bytes");
                    if (!File.Exists(limitFile))
                    {
                        group.Dispose();
                        continue;
                    }

                    File.WriteAllText(limitFile, limit.ToString(CultureInfo.InvariantCulture));
                    group.TryWrite(v2 ? "memory.swap.max" : "memory.memsw.limit_in_bytes", v2 ? "0" : limit.ToString(CultureInfo.InvariantCulture));
                    return group;
                }
                catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
                {
                    try
                    {
                        Directory.Delete(dir);
                    }
                    catch (Exception cleanup) when (cleanup is IOException or UnauthorizedAccessException)
                    {
                        // Not created, or not ours to remove.
                    }
                }
            }

            return null;
        }

        public void Dispose()
        {
            // The group empties a moment after its last process exits; only then can it be removed.
            for (int attempt = 0; attempt < 50 && Directory.Exists(_dir); attempt++)
            {
                try
                {
                    Directory.Delete(_dir);
                }
                catch (IOException)
                {
                    Thread.Sleep(20);
                }
            }
        }

        private void TryWrite(string file, string value)
        {
            try
            {
                File.WriteAllText(Path.Combine(_dir, file), value);
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                // No swap accounting here; there is no swap to fall back on either.
            }
        }

        private long? ReadLong(string file)
        {
            var path = Path.Combine(_dir, file);
            return File.Exists(path) && long.TryParse(File.ReadAllText(path).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out long value) ? value : null;
        }
    }
}
