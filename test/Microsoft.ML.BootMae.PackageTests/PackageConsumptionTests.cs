using System.Diagnostics;
using System.IO.Compression;
using System.Text;
using Microsoft.VisualStudio.TestTools.UnitTesting;

[assembly: Parallelize(Workers = 1, Scope = ExecutionScope.ClassLevel)]

namespace Microsoft.ML.BootMae.PackageTests;

/// <summary>
/// Packs the library with a unique prerelease version into a local folder feed, then restores, builds and runs a
/// fresh console app outside the repository that references it as a NuGet consumer would.
/// </summary>
[TestClass]
public sealed class PackageConsumptionTests
{
#if DEBUG
    private const string Configuration = "Debug";
#else
    private const string Configuration = "Release";
#endif
    private const string TorchSharpVersion = "0.107.0";

    public TestContext TestContext { get; set; } = null!;

    [TestMethod]
    [TestCategory("Package")]
    public void PackedLibraryRestoresBuildsAndRunsInAFreshConsoleApp()
    {
        var repo = FindRepoRoot();
        var temp = Path.Combine(Path.GetTempPath(), "bootmae-package-" + Guid.NewGuid().ToString("N")[..12]);
        Assert.IsFalse(IsUnder(temp, repo), $"The consumer must live outside the repository, but {temp} is under {repo}.");
        var version = $"0.1.0-ci.{DateTime.UtcNow.Ticks}";
        var feed = Path.Combine(temp, "feed");
        var app = Path.Combine(temp, "app");
        try
        {
            // 1. Pack the library as built for this configuration; only the package's version is unique.
            var library = Path.Combine(repo, "src", "Microsoft.ML.BootMae", "Microsoft.ML.BootMae.csproj");
            List<string> pack =
            [
                "pack", library, "-c", Configuration, "-o", feed, "-nologo", "-nodeReuse:false",
                $"-p:PackageVersion={version}", $"-p:NuspecOutputPath={Path.Combine(temp, "nuspec")}{Path.DirectorySeparatorChar}",
            ];
            if (File.Exists(Path.Combine(repo, "src", "Microsoft.ML.BootMae", "obj", "project.assets.json")))
            {
                pack.Add("--no-restore"); // a restore would record the unique version in the repo's assets file
            }

            Dotnet(repo, TimeSpan.FromMinutes(4), null, [.. pack]);
            var nupkg = Path.Combine(feed, $"Microsoft.ML.BootMae.{version}.nupkg");
            Assert.IsTrue(File.Exists(nupkg), $"dotnet pack did not produce {nupkg}.");
            Assert.IsTrue(File.Exists(Path.ChangeExtension(nupkg, ".snupkg")), "dotnet pack did not produce the symbol package (.snupkg).");
            AssertPackageContents(nupkg);

            // 2. A fresh console app, isolated from the repository's MSBuild and NuGet settings.
            WriteConsumer(app, feed, version);
            var globalPackages = GlobalPackagesFolder(repo);
            var isolatedPackages = Path.Combine(temp, "nuget-packages");
            var environment = new Dictionary<string, string?> { ["NUGET_PACKAGES"] = isolatedPackages };
            Dotnet(app, TimeSpan.FromMinutes(4), environment,
                "restore", "-nologo", $"-p:RestoreAdditionalProjectFallbackFolders={globalPackages}");
            Assert.IsTrue(
                Directory.Exists(Path.Combine(isolatedPackages, "microsoft.ml.bootmae", version)),
                "The package did not come from the local feed into the isolated packages folder.");
            Dotnet(app, TimeSpan.FromMinutes(4), environment,
                "build", "-c", "Release", "--no-restore", "-nologo", "-nodeReuse:false");

            // 3. Run it; BootMAE's native-load fix must make torch load with no step of the app's own.
            var dll = Path.Combine(app, "bin", "Release", "net10.0", "Consumer.dll");
            var run = Run(DotnetPath(), app, TimeSpan.FromMinutes(3),
                new Dictionary<string, string?> { ["BOOTMAE_NO_NATIVE_PATCH"] = null },
                "exec", dll, Path.Combine(temp, "work"));
            TestContext.WriteLine(run.Output);
            Assert.AreEqual(0, run.ExitCode, $"The consumer app failed:\n{run.Output}");
            Assert.Contains("materialized: 20 train, 10 test", run.Output);
            Assert.Contains("pixels: 20 images x 784 values", run.Output);
            Assert.Contains("pretrained: step 1/1, loss finite: True", run.Output);
            Assert.Contains("encoder round trip: D=32, depth=2", run.Output);
            Assert.Contains("featurized: 20 images x 32 floats, finite: True", run.Output);
            Assert.Contains("curves: True, tensorboard files: 1", run.Output);
            Assert.Contains(
                Path.Combine(app, "bin") + Path.DirectorySeparatorChar, run.Output, "The native preparation did not examine the app's own LibTorchSharp.");
            Assert.Contains("BOOTMAE-CONSUMER-OK", run.Output);
        }
        finally
        {
            TryDelete(temp);
        }
    }

    private static void AssertPackageContents(string nupkg)
    {
        using var zip = ZipFile.OpenRead(nupkg);
        var entries = zip.Entries.Select(e => e.FullName).ToHashSet(StringComparer.Ordinal);
        string[] expected =
        [
            "lib/net10.0/Microsoft.ML.BootMae.dll", "lib/net10.0/Microsoft.ML.BootMae.xml",
            "lib/net8.0/Microsoft.ML.BootMae.dll", "lib/net8.0/Microsoft.ML.BootMae.xml",
            "README.md", "icon.png", "LICENSE", "THIRD-PARTY-NOTICES.txt", "Microsoft.ML.BootMae.nuspec",
        ];
        var missing = expected.Where(e => !entries.Contains(e)).ToList();
        Assert.IsEmpty(missing, $"Missing from the package: {string.Join(", ", missing)}. It holds: {string.Join(", ", entries.Order())}");

        // The native-load fix is library code that runs at startup: the package needs no MSBuild assets.
        var buildAssets = entries.Where(e => e.StartsWith("build/", StringComparison.Ordinal) || e.StartsWith("buildTransitive/", StringComparison.Ordinal)).ToList();
        Assert.IsEmpty(buildAssets, $"Unexpected MSBuild assets: {string.Join(", ", buildAssets)}");

        using var nuspec = new StreamReader(zip.GetEntry("Microsoft.ML.BootMae.nuspec")!.Open());
        var text = nuspec.ReadToEnd();
        Assert.Contains("<license type=\"expression\">MIT</license>", text);
        Assert.Contains("id=\"TorchSharp\"", text, "The package must depend on the managed TorchSharp package.");
        Assert.Contains("id=\"OxyPlot.SkiaSharp\"", text, "The training curves are drawn with OxyPlot.SkiaSharp.");
        Assert.DoesNotContain("id=\"TorchSharp-cpu\"", text, "The package must leave the native runtime (TorchSharp-cpu or -cuda) to the app.");
        Assert.Contains("id=\"Google.Protobuf\"", text, "The ONNX export writes its files with Google.Protobuf.");
        Assert.DoesNotContain("Grpc.Tools", text, "Grpc.Tools only generates the ONNX classes at build time.");
        Assert.DoesNotContain("OnnxRuntime", text, "ONNX Runtime belongs to the serving app, never to the library.");
    }

    private static void WriteConsumer(string app, string feed, string version)
    {
        Directory.CreateDirectory(app);
        File.Copy(Path.Combine(AppContext.BaseDirectory, "ConsumerApp", "Program.cs"), Path.Combine(app, "Program.cs"));

        // Empty MSBuild files stop the search for any Directory.*.props/targets further up.
        File.WriteAllText(Path.Combine(app, "Directory.Build.props"), "<Project />\n");
        File.WriteAllText(Path.Combine(app, "Directory.Build.targets"), "<Project />\n");
        File.WriteAllText(Path.Combine(app, "Directory.Packages.props"),
            "<Project><PropertyGroup><ManagePackageVersionsCentrally>false</ManagePackageVersionsCentrally></PropertyGroup></Project>\n");
        File.WriteAllText(Path.Combine(app, "NuGet.config"), $"""
            <?xml version="1.0" encoding="utf-8"?>
            <configuration>
              <packageSources>
                <clear />
                <add key="local" value="{feed}" />
                <add key="nuget.org" value="https://api.nuget.org/v3/index.json" protocolVersion="3" />
              </packageSources>
            </configuration>
            """);
        File.WriteAllText(Path.Combine(app, "Consumer.csproj"), $"""
            <Project Sdk="Microsoft.NET.Sdk">
              <PropertyGroup>
                <OutputType>Exe</OutputType>
                <TargetFramework>net10.0</TargetFramework>
                <Nullable>enable</Nullable>
                <ImplicitUsings>enable</ImplicitUsings>
              </PropertyGroup>
              <ItemGroup>
                <PackageReference Include="Microsoft.ML.BootMae" Version="[{version}]" />
                <PackageReference Include="TorchSharp-cpu" Version="{TorchSharpVersion}" />
              </ItemGroup>
            </Project>
            """);
    }

    private static string GlobalPackagesFolder(string repo)
    {
        var result = Run(DotnetPath(), repo, TimeSpan.FromMinutes(1), null, "nuget", "locals", "global-packages", "--list");
        Assert.AreEqual(0, result.ExitCode, result.Output);
        const string Prefix = "global-packages:";
        var line = result.Output.Split('\n').Select(l => l.Trim()).FirstOrDefault(l => l.StartsWith(Prefix, StringComparison.Ordinal));
        Assert.IsNotNull(line, $"Could not read the global packages folder from:\n{result.Output}");
        return line[Prefix.Length..].Trim();
    }

    private void Dotnet(string directory, TimeSpan timeout, IDictionary<string, string?>? environment, params string[] arguments)
    {
        var result = Run(DotnetPath(), directory, timeout, environment, arguments);
        TestContext.WriteLine($"dotnet {string.Join(' ', arguments)}: exit {result.ExitCode} in {result.Elapsed.TotalSeconds:F0} s");
        Assert.AreEqual(0, result.ExitCode, $"dotnet {string.Join(' ', arguments)} failed in {directory}:\n{result.Output}");
    }

    private static string DotnetPath() =>
        Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host) ? host : "dotnet";

    private static ProcessResult Run(string fileName, string directory, TimeSpan timeout, IDictionary<string, string?>? environment, params string[] arguments)
    {
        var start = new ProcessStartInfo(fileName)
        {
            WorkingDirectory = directory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        // Variables set by the outer `dotnet test` build would leak into the child builds.
        foreach (var name in start.Environment.Keys.ToList())
        {
            if (name.StartsWith("MSBuild", StringComparison.OrdinalIgnoreCase) || name.StartsWith("VSTEST", StringComparison.OrdinalIgnoreCase)
                || name.StartsWith("TESTINGPLATFORM", StringComparison.OrdinalIgnoreCase) || name == "NUGET_PACKAGES")
            {
                start.Environment.Remove(name);
            }
        }

        start.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        start.Environment["DOTNET_NOLOGO"] = "1";
        start.Environment["DOTNET_SKIP_FIRST_TIME_EXPERIENCE"] = "1";
        foreach (var (name, value) in environment ?? new Dictionary<string, string?>())
        {
            if (value is null)
            {
                start.Environment.Remove(name);
            }
            else
            {
                start.Environment[name] = value;
            }
        }

        var output = new StringBuilder();
        var watch = Stopwatch.StartNew();
        using var process = new Process { StartInfo = start };
        process.OutputDataReceived += (_, e) => Append(output, e.Data);
        process.ErrorDataReceived += (_, e) => Append(output, e.Data);
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        if (!process.WaitForExit(timeout))
        {
            process.Kill(entireProcessTree: true);
            process.WaitForExit();
            Append(output, $"[killed after {timeout.TotalSeconds:F0} s]");
            return new ProcessResult(-1, Tail(output), watch.Elapsed);
        }

        process.WaitForExit(); // drains the redirected streams
        return new ProcessResult(process.ExitCode, Tail(output), watch.Elapsed);
    }

    private static void Append(StringBuilder output, string? line)
    {
        if (line is null)
        {
            return;
        }

        lock (output)
        {
            output.AppendLine(line);
        }
    }

    private static string Tail(StringBuilder output)
    {
        lock (output)
        {
            const int Keep = 20_000;
            return output.Length <= Keep ? output.ToString() : "…" + output.ToString(output.Length - Keep, Keep);
        }
    }

    private static string FindRepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Microsoft.ML.BootMae.sln")))
            {
                return dir.FullName;
            }
        }

        throw new InvalidOperationException($"No Microsoft.ML.BootMae.sln above {AppContext.BaseDirectory}.");
    }

    private static bool IsUnder(string path, string root)
    {
        var relative = Path.GetRelativePath(Path.GetFullPath(root), Path.GetFullPath(path));
        return relative != ".." && !relative.StartsWith(".." + Path.DirectorySeparatorChar, StringComparison.Ordinal) && !Path.IsPathRooted(relative);
    }

    private static void TryDelete(string directory)
    {
        try
        {
            if (Directory.Exists(directory))
            {
                Directory.Delete(directory, recursive: true);
            }
        }
        catch (IOException)
        {
            // Best effort: a leftover temp folder must not fail the test.
        }
        catch (UnauthorizedAccessException)
        {
        }
    }

    private sealed record ProcessResult(int ExitCode, string Output, TimeSpan Elapsed);
}
