using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using Microsoft.ML.BootMae.Native;
using TorchSharp;

namespace Microsoft.ML.BootMae;

/// <summary>
/// Prepares the native torch runtime before its first use: makes LibTorchSharp loadable on distributions with an
/// older libstdc++ (Debian 12, Ubuntu 22.04), keeps libtorch's OpenMP threads from spin-waiting, and turns a
/// failed native load into an error that says what was tried and what to do.
/// </summary>
/// <remarks>
/// Every BootMAE component calls <see cref="EnsureTorchLoaded"/> itself, and the library runs the preparation when
/// it is first loaded, so apps need no manual step. Call it yourself only if your code touches TorchSharp before any
/// BootMAE type. Opt out of the OpenMP setting by setting <c>OMP_WAIT_POLICY</c> yourself (e.g. <c>ACTIVE</c>);
/// opt out of the library fix by setting <c>BOOTMAE_NO_NATIVE_PATCH=1</c>.
/// </remarks>
public static class BootMaeRuntime
{
    private const string LibStdCxx = "libstdc++.so.6";
    private static readonly object Gate = new();
    private static readonly List<string> Report = new();
    private static bool _prepared;
    private static bool _loaded;

    // std::ios_base_library_init(): emitted by GCC 13's <iostream> as a link-time marker and never called.
    private static readonly HashSet<string> MarkerSymbols = new(StringComparer.Ordinal) { "_ZSt21ios_base_library_initv" };

    /// <summary>What the native preparation checked and changed in this process, one line per item.</summary>
    public static IReadOnlyList<string> PreparationLog
    {
        get
        {
            lock (Gate)
            {
                return Report.ToArray();
            }
        }
    }

    /// <summary>
    /// Prepares and loads the native torch runtime once per process.
    /// </summary>
    /// <exception cref="BootMaeNativeLoadException">libtorch or LibTorchSharp could not be loaded; the message lists
    /// what was tried and how to fix it.</exception>
    public static void EnsureTorchLoaded()
    {
        lock (Gate)
        {
            if (_loaded)
            {
                return;
            }

            PrepareNativeLibrariesLocked();
            try
            {
                // Touching any torch member runs TorchSharp's native loader (its static constructor).
                _ = torch.get_num_threads();
                _loaded = true;
            }
            catch (Exception ex) when (ex is TypeInitializationException or DllNotFoundException or NotSupportedException or EntryPointNotFoundException)
            {
                throw new BootMaeNativeLoadException(Explain(ex), ex);
            }
        }
    }

#pragma warning disable CA2255 // A module initializer is the one hook that runs before user code can touch TorchSharp.
    [ModuleInitializer]
#pragma warning restore CA2255
    internal static void PrepareOnAssemblyLoad()
    {
        lock (Gate)
        {
            PrepareNativeLibrariesLocked();
        }
    }

    private static void PrepareNativeLibrariesLocked()
    {
        if (_prepared)
        {
            return;
        }

        _prepared = true;
        if (!OperatingSystem.IsLinux())
        {
            return;
        }

        try
        {
            SetPassiveOpenMpWait();
            if (Environment.GetEnvironmentVariable("BOOTMAE_NO_NATIVE_PATCH") is "1" or "true")
            {
                Report.Add("BOOTMAE_NO_NATIVE_PATCH is set: LibTorchSharp left as shipped.");
                return;
            }

            PatchLibTorchSharpCopies();
            PreloadPackagedLibTorch();
        }
        catch (Exception ex)
        {
            // Preparation must never break the host; a real load failure is reported by EnsureTorchLoaded.
            Report.Add($"Native preparation failed: {ex.GetType().Name}: {ex.Message}");
        }
    }

    private static void SetPassiveOpenMpWait()
    {
        // libgomp reads OMP_WAIT_POLICY when it is loaded, through the native environment, which
        // Environment.SetEnvironmentVariable does not reach on Unix.
        if (Environment.GetEnvironmentVariable("OMP_WAIT_POLICY") is { Length: > 0 } userValue || NativeGetEnv("OMP_WAIT_POLICY") is { Length: > 0 })
        {
            Report.Add("OMP_WAIT_POLICY already set by the user: left unchanged.");
            return;
        }

        if (setenv("OMP_WAIT_POLICY", "PASSIVE", 0) == 0)
        {
            Environment.SetEnvironmentVariable("OMP_WAIT_POLICY", "PASSIVE");
            Report.Add("OMP_WAIT_POLICY=PASSIVE set (libtorch's OpenMP threads sleep instead of spinning).");
        }
    }

    private static void PatchLibTorchSharpCopies()
    {
        var hostVersions = HostLibStdCxxVersions(out var hostPath);
        if (hostVersions is null)
        {
            Report.Add("No libstdc++.so.6 found in this process: LibTorchSharp left as shipped.");
            return;
        }

        foreach (var candidate in CandidateLibraries())
        {
            try
            {
                var missing = ElfVersionPatcher.ReadRequirements(candidate)
                    .Where(r => r.Library == LibStdCxx && !r.IsWeak && !hostVersions.Contains(r.Version))
                    .ToList();
                if (missing.Count == 0)
                {
                    Report.Add($"{candidate}: compatible with {hostPath}.");
                    continue;
                }

                foreach (var requirement in missing)
                {
                    if (requirement.Symbols.All(MarkerSymbols.Contains))
                    {
                        var outcome = ElfVersionPatcher.MakeVersionWeak(candidate, LibStdCxx, requirement.Version, MarkerSymbols);
                        Report.Add($"{candidate}: {requirement.Version} ({string.Join(", ", requirement.Symbols)}) marked weak: {outcome}.");
                    }
                    else
                    {
                        Report.Add($"{candidate}: needs {requirement.Version} for {string.Join(", ", requirement.Symbols.Take(3))}, which {hostPath} lacks; a newer libstdc++ is required.");
                    }
                }
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or InvalidDataException or InvalidOperationException)
            {
                Report.Add($"{candidate}: could not be checked or patched ({ex.Message}).");
            }
        }
    }

    /// <summary>
    /// Notebooks (#r "nuget: ...") load TorchSharp.dll from the NuGet packages folder with no libtorch beside it, so
    /// TorchSharp's loader first opens libtorch_cpu by name and can pick up a system libtorch (Debian's python3-torch)
    /// that LibTorchSharp 0.107 cannot use. Loading the libtorch-cpu package's own copy by path first makes that name
    /// resolve to it (the dynamic loader matches already-loaded libraries by soname).
    /// </summary>
    private static void PreloadPackagedLibTorch()
    {
        const string name = "libtorch_cpu.so";
        var torchSharp = Path.GetDirectoryName(typeof(torch).Assembly.Location);
        if (string.IsNullOrEmpty(torchSharp) || RuntimeInformation.ProcessArchitecture != Architecture.X64)
        {
            return;
        }

        string[] appLocal = [Path.Combine(torchSharp, name), Path.Combine(AppContext.BaseDirectory, name), Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native", name)];
        // NuGet layout: <packages>/torchsharp/<version>/lib/<tfm>/TorchSharp.dll.
        var packages = Path.GetFullPath(Path.Combine(torchSharp, "..", "..", "..", ".."));
        var libTorchPackage = Path.Combine(packages, "libtorch-cpu-linux-x64");
        if (appLocal.Any(File.Exists) || !Directory.Exists(libTorchPackage)
            || !Path.GetFileName(Path.GetFullPath(Path.Combine(torchSharp, "..", "..", ".."))).Equals("torchsharp", StringComparison.OrdinalIgnoreCase))
        {
            return;
        }

        var native = Directory.GetDirectories(libTorchPackage)
            .Select(version => Path.Combine(version, "runtimes", "linux-x64", "native"))
            .Where(folder => File.Exists(Path.Combine(folder, name)))
            .OrderByDescending(folder => Version.TryParse(Path.GetFileName(Path.GetFullPath(Path.Combine(folder, "..", "..", ".."))), out var v) ? v : new Version(0, 0))
            .FirstOrDefault();
        if (native is null)
        {
            return;
        }

        // LibTorchSharp needs libtorch.so, which the package folder of TorchSharp lacks, so without this the loader would
        // take a system libtorch.so (and its libtorch_cpu) by name and crash or fail beside the package's libtorch.
        foreach (var library in new[] { "libc10.so", name, "libtorch.so" })
        {
            var path = Path.Combine(native, library);
            Report.Add(File.Exists(path) && NativeLibrary.TryLoad(path, out _)
                ? $"{path}: loaded first (TorchSharp.dll runs from the NuGet packages folder, as in notebooks)."
                : $"{path}: could not be preloaded.");
        }
    }

    /// <summary>The copies of LibTorchSharp that TorchSharp's loader may open, app-local ones first.</summary>
    private static IEnumerable<string> CandidateLibraries()
    {
        const string name = "libLibTorchSharp.so";
        var directories = new List<string>();
        if (AppContext.GetData("NATIVE_DLL_SEARCH_DIRECTORIES") is string searchDirectories)
        {
            directories.AddRange(searchDirectories.Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries));
        }

        string rid = RuntimeInformation.ProcessArchitecture == Architecture.Arm64 ? "linux-arm64" : "linux-x64";
        foreach (var root in new[] { AppContext.BaseDirectory, Path.GetDirectoryName(typeof(torch).Assembly.Location) })
        {
            if (string.IsNullOrEmpty(root))
            {
                continue;
            }

            directories.Add(root);
            directories.Add(Path.Combine(root, "runtimes", rid, "native"));
            // TorchSharp's fallback loader consolidates natives into these folders next to TorchSharp.dll.
            directories.Add(Path.Combine(root, "cpu"));
            directories.Add(Path.Combine(root, "cuda"));
            // NuGet layout when TorchSharp.dll is loaded from the package cache (notebooks): lib/<tfm>/ → runtimes/.
            directories.Add(Path.GetFullPath(Path.Combine(root, "..", "..", "runtimes", rid, "native")));
        }

        return directories
            .Select(d => Path.Combine(Path.GetFullPath(d), name))
            .Distinct(StringComparer.Ordinal)
            .Where(File.Exists);
    }

    private static IReadOnlySet<string>? HostLibStdCxxVersions(out string? path)
    {
        path = FindLoadedLibStdCxx() ?? new[]
        {
            "/usr/lib/x86_64-linux-gnu/libstdc++.so.6", "/usr/lib/aarch64-linux-gnu/libstdc++.so.6",
            "/usr/lib64/libstdc++.so.6", "/usr/lib/libstdc++.so.6", "/lib64/libstdc++.so.6",
        }.FirstOrDefault(File.Exists);
        return path is null ? null : ElfVersionPatcher.ReadDefinedVersions(path);
    }

    /// <summary>The libstdc++ that the dynamic loader has already mapped into this process (the .NET host needs one).</summary>
    private static string? FindLoadedLibStdCxx()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/self/maps"))
            {
                int slash = line.IndexOf('/');
                if (slash >= 0)
                {
                    var mapped = line[slash..].Trim();
                    if (Path.GetFileName(mapped).StartsWith("libstdc++.so", StringComparison.Ordinal))
                    {
                        return mapped;
                    }
                }
            }
        }
        catch (IOException)
        {
        }

        return null;
    }

    private static string Explain(Exception ex)
    {
        var text = new StringBuilder();
        text.AppendLine("BootMAE could not load the native torch runtime (libtorch + LibTorchSharp).");
        text.AppendLine("What was tried:");
        foreach (var line in PreparationLog)
        {
            text.Append("  - ").AppendLine(line);
        }

        foreach (var foreign in LoadedLibTorchOutsidePackages())
        {
            text.Append("  - A different libtorch is already loaded in this process: ").Append(foreign)
                .AppendLine(". TorchSharp found it by name because no libtorch sits next to the app (typical of notebooks), and LibTorchSharp 0.107 needs libtorch 2.10. It usually comes from Debian/Ubuntu's libtorch-dev (python3-torch): reference TorchSharp-cpu in the app so libtorch 2.10 is app-local, or remove that package.");
        }

        text.AppendLine("What you can do:");
        text.AppendLine("  - Reference a runtime package in your app: TorchSharp-cpu 0.107.0 (CPU), or TorchSharp-cuda-linux 0.107.0 (NVIDIA GPUs on Linux).");
        text.AppendLine("  - Linux needs libstdc++ with GLIBCXX_3.4.30 (GCC 12 or newer: Debian 12, Ubuntu 22.04, Fedora 36+). On RHEL 9 install a newer GCC runtime (e.g. gcc-toolset-13) and put its libstdc++ on LD_LIBRARY_PATH.");
        text.AppendLine("  - If the app folder is read-only, run the app once from a writable copy, or patch at publish time; see docs/troubleshooting.md.");
        text.AppendLine("  - Windows: TorchSharp 0.107.0's native library is known not to load there (TorchSharp issue 1567); use Linux.");
        text.Append("Original error: ").Append(ex.GetType().Name).Append(": ").Append(ex.InnerException?.Message ?? ex.Message);
        return text.ToString();
    }

    /// <summary>libtorch_cpu copies mapped into this process from outside NuGet package folders (e.g. a system libtorch).</summary>
    private static IEnumerable<string> LoadedLibTorchOutsidePackages()
    {
        if (!OperatingSystem.IsLinux())
        {
            return Array.Empty<string>();
        }

        try
        {
            return File.ReadLines("/proc/self/maps")
                .Select(line => line.IndexOf('/') is var i and >= 0 ? line[i..].Trim() : string.Empty)
                .Where(path => Path.GetFileName(path).StartsWith("libtorch_cpu.so", StringComparison.Ordinal))
                .Where(path => !path.Contains("/runtimes/", StringComparison.Ordinal) && !path.StartsWith(AppContext.BaseDirectory, StringComparison.Ordinal)
                    && !path.Contains("/cpu/libtorch_cpu.so", StringComparison.Ordinal) && !path.Contains("/cuda/libtorch_cpu.so", StringComparison.Ordinal))
                .Distinct(StringComparer.Ordinal)
                .ToList();
        }
        catch (IOException)
        {
            return Array.Empty<string>();
        }
    }

    private static string? NativeGetEnv(string name)
    {
        var value = getenv(name);
        return value == IntPtr.Zero ? null : Marshal.PtrToStringUTF8(value);
    }

    [DllImport("libc", CharSet = CharSet.Ansi, BestFitMapping = false, ThrowOnUnmappableChar = true)]
    private static extern int setenv(string name, string value, int overwrite);

    [DllImport("libc", CharSet = CharSet.Ansi, BestFitMapping = false, ThrowOnUnmappableChar = true)]
    private static extern IntPtr getenv(string name);
}

/// <summary>Thrown when the native torch runtime cannot be loaded; the message says what was tried and what to do.</summary>
public sealed class BootMaeNativeLoadException : Exception
{
    /// <summary>Creates the exception.</summary>
    /// <param name="message">The explanation, with what was tried and the fixes.</param>
    /// <param name="innerException">The loader's original error.</param>
    public BootMaeNativeLoadException(string message, Exception innerException)
        : base(message, innerException)
    {
    }
}
