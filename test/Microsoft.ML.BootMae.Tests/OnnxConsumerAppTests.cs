using System.Diagnostics;
using System.Globalization;
using System.Text;
using Microsoft.ML.Data;

namespace Microsoft.ML.BootMae.Tests;

/// <summary>
/// The deployment proof: a classifier trained here is exported to ONNX and put in an ML.NET pipeline saved by plain
/// <c>mlContext.Model.Save</c>; a fresh console app outside the repository that references only Microsoft.ML,
/// Microsoft.ML.ImageAnalytics, Microsoft.ML.OnnxTransformer and Microsoft.ML.OnnxRuntime loads it with
/// <c>mlContext.Model.Load</c>, matches the TorchSharp predictions and finds no libtorch in its /proc/self/maps.
/// </summary>
[TestClass]
public sealed class OnnxConsumerAppTests
{
    private const string MlNetVersion = "5.0.1";
    private const string OnnxRuntimeVersion = "1.31.1";

    public TestContext TestContext { get; set; } = null!;

    [TestMethod]
    [TestCategory("Package")]
    public void PlainMlNetAppServesTheExportedClassifierWithoutLibtorch()
    {
        using var data = new MlNetTestData();
        var ml = new MLContext(seed: 1);
        var rows = new List<(string, string)>();
        for (int i = 0; i < 9; i++)
        {
            rows.Add((data.WriteColour($"img{i}.png", 8, 8, shift: i * 20), new[] { "shirt", "boot", "bag" }[i % 3]));
        }

        var view = MlNetTestData.Rows(ml, rows);
        using var encoder = BootMaeEncoder.CreateRandom(MlNetTestData.Tiny8, seed: 2);
        using var model = ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.Transforms.LoadRawImageBytes("Image", data.Folder, "ImagePath"))
            .Append(ml.MulticlassClassification.Trainers.BootMaeImageClassification(new BootMaeImageClassificationTrainer.Options
            {
                Encoder = encoder, MaxEpochs = 2, BatchSize = 9, Seed = 1,
            }))
            .Fit(view);

        // The TorchSharp predictions.
        var scored = model.Transform(view);
        var scores = scored.GetColumn<VBuffer<float>>("Score").Select(v => v.DenseValues().ToArray()).ToList();
        var labels = scored.GetColumn<uint>("PredictedLabel").ToList();
        var expected = new StringBuilder("predicted\tscores\n");
        for (int i = 0; i < scores.Count; i++)
        {
            expected.Append(CultureInfo.InvariantCulture, $"{labels[i] - 1}\t{string.Join(',', scores[i].Select(s => s.ToString("R", CultureInfo.InvariantCulture)))}\n");
        }

        var work = Path.Combine(data.Folder, "deploy");
        Directory.CreateDirectory(work);
        File.WriteAllText(Path.Combine(work, "expected.tsv"), expected.ToString());
        File.WriteAllText(Path.Combine(work, "images.tsv"), "ImagePath\n" + string.Join('\n', rows.Select(r => r.Item1)) + "\n");

        // Export, then the ML.NET pipeline that plain Model.Save persists.
        var onnx = Path.Combine(work, "classifier.onnx");
        model.LastTransformer.ExportOnnx(onnx);
        var pipeline = ml.Transforms.BootMaeOnnxInput(MlNetTestData.Tiny8, data.Folder)
            .Append(ml.Transforms.ApplyOnnxModel(["scores", "predicted"], ["pixels"], onnx));
        var zip = Path.Combine(work, "model.zip");
        ml.Model.Save(pipeline.Fit(view), view.Schema, zip);

        // A fresh console app outside the repository, with none of its MSBuild or package settings.
        var app = Path.Combine(data.Folder, "app");
        WriteConsumer(app);
        Dotnet(app, TimeSpan.FromMinutes(5), "build", "-c", "Release", "-nologo", "-nodeReuse:false",
            $"-p:RestoreAdditionalProjectFallbackFolders={GlobalPackagesFolder()}");
        var assets = File.ReadAllText(Path.Combine(app, "obj", "project.assets.json"));
        Assert.DoesNotContain("TorchSharp", assets, StringComparison.OrdinalIgnoreCase, "the consumer must not get TorchSharp, even transitively");
        Assert.DoesNotContain("Microsoft.ML.BootMae", assets, StringComparison.OrdinalIgnoreCase);

        var run = Run(DotnetPath(), app, TimeSpan.FromMinutes(2), "exec", Path.Combine(app, "bin", "Release", "net10.0", "Consumer.dll"),
            zip, onnx, Path.Combine(work, "images.tsv"), Path.Combine(work, "expected.tsv"));
        TestContext.WriteLine(run.Output);
        Assert.AreEqual(0, run.ExitCode, run.Output);
        Assert.Contains("predicted mismatches: 0", run.Output);
        Assert.Contains("libtorch mapped: False; onnxruntime mapped: True", run.Output);
        Assert.Contains("classes: shirt, boot, bag", run.Output);
        Assert.Contains("BOOTMAE-ONNX-CONSUMER-OK", run.Output);
    }

    private static void WriteConsumer(string app)
    {
        Directory.CreateDirectory(app);
        File.Copy(Path.Combine(AppContext.BaseDirectory, "OnnxConsumerApp", "Program.cs"), Path.Combine(app, "Program.cs"));
        File.WriteAllText(Path.Combine(app, "Directory.Build.props"), "<Project />\n");
        File.WriteAllText(Path.Combine(app, "Directory.Build.targets"), "<Project />\n");
        File.WriteAllText(Path.Combine(app, "Directory.Packages.props"),
            "<Project><PropertyGroup><ManagePackageVersionsCentrally>false</ManagePackageVersionsCentrally></PropertyGroup></Project>\n");
        File.WriteAllText(Path.Combine(app, "NuGet.config"), """
            <?xml version="1.0" encoding="utf-8"?>
            <configuration>
              <packageSources>
                <clear />
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
                <PackageReference Include="Microsoft.ML" Version="{MlNetVersion}" />
                <PackageReference Include="Microsoft.ML.ImageAnalytics" Version="{MlNetVersion}" />
                <PackageReference Include="Microsoft.ML.OnnxTransformer" Version="{MlNetVersion}" />
                <PackageReference Include="Microsoft.ML.OnnxRuntime" Version="{OnnxRuntimeVersion}" />
              </ItemGroup>
            </Project>
            """);
    }

    private static string GlobalPackagesFolder()
    {
        var result = Run(DotnetPath(), AppContext.BaseDirectory, TimeSpan.FromMinutes(1), "nuget", "locals", "global-packages", "--list");
        Assert.AreEqual(0, result.ExitCode, result.Output);
        const string Prefix = "global-packages:";
        var line = result.Output.Split('\n').Select(l => l.Trim()).First(l => l.StartsWith(Prefix, StringComparison.Ordinal));
        return line[Prefix.Length..].Trim();
    }

    private void Dotnet(string directory, TimeSpan timeout, params string[] arguments)
    {
        var result = Run(DotnetPath(), directory, timeout, arguments);
        TestContext.WriteLine($"dotnet {string.Join(' ', arguments)}: exit {result.ExitCode}");
        Assert.AreEqual(0, result.ExitCode, $"dotnet {string.Join(' ', arguments)} failed in {directory}:\n{result.Output}");
    }

    private static string DotnetPath() =>
        Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host) ? host : "dotnet";

    private static (int ExitCode, string Output) Run(string fileName, string directory, TimeSpan timeout, params string[] arguments)
    {
        var start = new ProcessStartInfo(fileName)
        {
            WorkingDirectory = directory, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        };
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        // Variables of the outer `dotnet test` build would leak into the child build.
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
        var output = new StringBuilder();
        using var process = new Process { StartInfo = start };
        process.OutputDataReceived += (_, e) => { lock (output) { output.AppendLine(e.Data); } };
        process.ErrorDataReceived += (_, e) => { lock (output) { output.AppendLine(e.Data); } };
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        if (!process.WaitForExit(timeout))
        {
            process.Kill(entireProcessTree: true);
            process.WaitForExit();
            return (-1, output + $"[killed after {timeout.TotalSeconds:F0} s]");
        }

        process.WaitForExit();
        lock (output)
        {
            return (process.ExitCode, output.ToString());
        }
    }
}
