using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;
using Microsoft.DotNet.Interactive;
using Microsoft.DotNet.Interactive.Commands;
using Microsoft.DotNet.Interactive.CSharp;
using Microsoft.DotNet.Interactive.Documents;
using Microsoft.DotNet.Interactive.Documents.Jupyter;
using Microsoft.DotNet.Interactive.Events;
using Microsoft.DotNet.Interactive.PackageManagement;
using Microsoft.VisualStudio.TestTools.UnitTesting;

[assembly: Parallelize(Workers = 1, Scope = ExecutionScope.ClassLevel)]

namespace Microsoft.ML.BootMae.NotebookTests;

/// <summary>
/// Runs samples/notebooks/BootMaeImageClassification.ipynb in-process with a .NET Interactive C# kernel, cell by cell,
/// and fails on any failed cell or compiler error, so the notebook cannot rot.
/// </summary>
/// <remarks>
/// Every cell runs exactly as written, the setup cells included: they add the repository's artifacts/packages (filled by
/// <c>./build.sh pack</c>; <c>./build.sh test</c> packs first) as a source and restore Microsoft.ML.BootMae and
/// TorchSharp-cpu with <c>#r "nuget: ..."</c>, as in Polyglot Notebooks. This project references neither the library nor
/// TorchSharp, so the assemblies that run are the package's. The restore uses an isolated packages folder (the package can
/// only come from the feed) with the machine's packages as a fallback (nothing is downloaded).
/// <para>
/// Outputs are collected as a notebook front end shows them: a displayed value whose handle's <c>Update(...)</c> is
/// called (<see cref="DisplayedValueUpdated"/> with the displayed value's id) is replaced in place, and every version is
/// kept, so the checks see the training cells' live progress as well as its final state.
/// </para>
/// </remarks>
[TestClass]
public sealed class NotebookTests
{
    private const string NotebookFile = "BootMaeImageClassification.ipynb";
    // The test's only time limit. On a 2-core machine shared with other jobs (load average 20-30 measured) pretraining
    // alone took 232 s of wall time; each cell's CPU time is printed too, which contention does not inflate.
    private static readonly TimeSpan CellTimeout = TimeSpan.FromMinutes(8);

    public TestContext TestContext { get; set; } = null!;

    [TestMethod]
    [TestCategory("Notebook")]
    public async Task ImageClassificationNotebookRunsCellByCell()
    {
        var repo = FindRepoRoot();
        var notebookFolder = Path.Combine(repo, "samples", "notebooks");
        var notebook = Notebook.Parse(File.ReadAllText(Path.Combine(notebookFolder, NotebookFile)));
        var cells = notebook.Elements.Where(e => e.KernelName is "csharp" or "C#").ToList();
        Assert.IsGreaterThan(5, cells.Count, $"Too few C# cells in {NotebookFile}: {cells.Count}.");
        var feed = CheckLocalFeed(repo, cells[0].Contents, cells[1].Contents);

        var temp = Path.Combine(Path.GetTempPath(), "bootmae-notebook-test-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(temp);
        var packages = Path.Combine(temp, "nuget-packages");
        var fallback = FallbackPackagesFolder(Path.Combine(temp, "fallback"));
        var saved = new Dictionary<string, string?>();
        void Set(string name, string? value)
        {
            saved.TryAdd(name, Environment.GetEnvironmentVariable(name));
            Environment.SetEnvironmentVariable(name, value);
        }

        // The kernel restores #r "nuget: ..." with a `dotnet` child process that inherits this process's environment:
        // an isolated packages folder, so the package can only come from the local feed (never a stale cached 0.1.0),
        // and the machine's packages (TorchSharp, libtorch, ML.NET) as a read-only fallback so nothing is downloaded.
        Set("NUGET_PACKAGES", packages);
        Set("NUGET_FALLBACK_PACKAGES", fallback);
        foreach (var name in Environment.GetEnvironmentVariables().Keys.Cast<string>()
                     .Where(n => n.StartsWith("MSBuild", StringComparison.OrdinalIgnoreCase) || n.StartsWith("VSTEST", StringComparison.OrdinalIgnoreCase)).ToList())
        {
            Set(name, null); // set by the outer `dotnet test` build; they would leak into the kernel's restore build
        }

        Set("TMPDIR", temp); // the notebook works under Path.GetTempPath(): keep runs apart
        var previousDirectory = Environment.CurrentDirectory;
        Environment.CurrentDirectory = notebookFolder; // as in Polyglot Notebooks: the notebook's relative #i path resolves from here
        var outputs = new List<CellOutput>();
        var total = Stopwatch.StartNew();
        var cpuAtStart = Process.GetCurrentProcess().TotalProcessorTime;
        var restoredFromFeed = false;
        try
        {
            // Set up as the dotnet-interactive tool (Polyglot Notebooks) sets up its C# kernel: #r/#i "nuget: ..." and the helpers.
            using var kernel = new CSharpKernel()
                .UseNugetDirective((k, resolved) =>
                {
                    k.AddAssemblyReferences(resolved.SelectMany(r => r.AssemblyPaths));
                    return Task.CompletedTask;
                }, forceRestore: true) // no results cache in ~/.packagemanagement: it would point into a deleted run's folders
                .UseKernelHelpers();
            for (var i = 0; i < cells.Count; i++)
            {
                var output = await RunCellAsync(kernel, i, cells[i].Contents);
                outputs.Add(output);
                TestContext.WriteLine($"--- cell {i} ({output.Elapsed.TotalSeconds:F1} s, CPU {output.Cpu.TotalSeconds:F1} s)\n{output.Text}");
                RecordOutputs(cells[i], output);
            }

            restoredFromFeed = Directory.Exists(Path.Combine(packages, "microsoft.ml.bootmae"));
        }
        finally
        {
            Environment.CurrentDirectory = previousDirectory;
            foreach (var (name, value) in saved)
            {
                Environment.SetEnvironmentVariable(name, value);
            }

            TryDelete(temp);
            SaveExecutedNotebook(notebook);
        }

        Assert.IsTrue(restoredFromFeed, $"Microsoft.ML.BootMae was not restored from {feed} into {packages}.");
        TestContext.WriteLine($"Notebook ran in {total.Elapsed.TotalSeconds:F0} s (CPU time of this process {(Process.GetCurrentProcess().TotalProcessorTime - cpuAtStart).TotalSeconds:F0} s).");
        AssertKeyOutputs(outputs);
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

        throw new AssertFailedException($"No Microsoft.ML.BootMae.sln above {AppContext.BaseDirectory}.");
    }

    /// <summary>
    /// Checks the notebook's first two cells (the #i source: the repository's artifacts/packages, found from the notebook's
    /// folder; then #r of the package and the CPU runtime) and that `./build.sh pack` has put the version the notebook
    /// asks for there, no older than the library built here.
    /// </summary>
    private static string CheckLocalFeed(string repo, string source, string setup)
    {
        Assert.Contains("Path.Combine(\"..\", \"..\", \"artifacts\", \"packages\")", source, "The first C# cell must add the folder `./build.sh pack` writes as a source.");
        Assert.Contains("#i \\\"nuget: ", source, "The first C# cell must add the local feed with #i \"nuget: ...\".");
        var feed = Path.Combine(repo, "artifacts", "packages");
        var reference = Regex.Match(setup, @"^#r ""nuget: ?Microsoft\.ML\.BootMae, ?([^""\s]+)""", RegexOptions.Multiline);
        Assert.IsTrue(reference.Success, $"The second C# cell must reference the package with #r \"nuget: Microsoft.ML.BootMae, <version>\":\n{setup}");
        Assert.Contains("#r \"nuget: TorchSharp-cpu,", setup, "The second C# cell must reference the CPU runtime.");

        var nupkg = Path.Combine(feed, $"Microsoft.ML.BootMae.{reference.Groups[1].Value}.nupkg");
        Assert.IsTrue(File.Exists(nupkg), $"{nupkg} is missing: run ./build.sh pack (./build.sh test does) before this test.");
        var built = Directory.GetFiles(Path.Combine(repo, "src", "Microsoft.ML.BootMae", "bin"), "Microsoft.ML.BootMae.dll", SearchOption.AllDirectories)
            .Select(File.GetLastWriteTimeUtc).DefaultIfEmpty(DateTime.MinValue).Max();
        Assert.IsTrue(File.GetLastWriteTimeUtc(nupkg) >= built,
            $"{nupkg} is older than the library built at {built:u}: run ./build.sh pack (./build.sh test does) before this test.");
        return feed;
    }

    /// <summary>
    /// A fallback packages folder that links every package of the machine's global packages folder except
    /// Microsoft.ML.BootMae, so the dependencies restore with no download while the package itself must come from the feed.
    /// </summary>
    private static string FallbackPackagesFolder(string folder)
    {
        var global = Environment.GetEnvironmentVariable("NUGET_PACKAGES") is { Length: > 0 } configured
            ? configured
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        Directory.CreateDirectory(folder);
        if (Directory.Exists(global))
        {
            foreach (var package in Directory.GetDirectories(global))
            {
                var name = Path.GetFileName(package);
                if (name.Equals("torchsharp", StringComparison.OrdinalIgnoreCase))
                {
                    // A copy (14 MB): in a notebook, TorchSharp gathers libtorch next to TorchSharp.dll (~500 MB) and
                    // BootMAE patches LibTorchSharp in the package folder; that must not touch the machine's cache.
                    CopyDirectory(package, Path.Combine(folder, name));
                }
                else if (!name.Equals("microsoft.ml.bootmae", StringComparison.OrdinalIgnoreCase))
                {
                    Directory.CreateSymbolicLink(Path.Combine(folder, name), package);
                }
            }
        }

        return folder;
    }

    private static void CopyDirectory(string source, string target)
    {
        foreach (var directory in Directory.GetDirectories(source, "*", SearchOption.AllDirectories))
        {
            Directory.CreateDirectory(Path.Combine(target, Path.GetRelativePath(source, directory)));
        }

        Directory.CreateDirectory(target);
        foreach (var file in Directory.GetFiles(source, "*", SearchOption.AllDirectories))
        {
            File.Copy(file, Path.Combine(target, Path.GetRelativePath(source, file)));
        }
    }

    private static void RecordOutputs(InteractiveDocumentElement cell, CellOutput output)
    {
        if (output.Text.Length > 0)
        {
            cell.Outputs.Add(new TextElement(output.Text));
        }

        foreach (var html in output.Html)
        {
            // A display updated in place is saved in its final state, as a front end leaves it.
            cell.Outputs.Add(new DisplayElement(new Dictionary<string, object> { ["text/html"] = html }));
        }
    }

    /// <summary>Keeps the notebook with its outputs (as far as it ran) among the test results, for reviewers.</summary>
    private void SaveExecutedNotebook(InteractiveDocument notebook)
    {
        var folder = TestContext.TestRunResultsDirectory ?? Path.GetTempPath();
        Directory.CreateDirectory(folder);
        var path = Path.Combine(folder, Path.GetFileNameWithoutExtension(NotebookFile) + ".executed.ipynb");
        File.WriteAllText(path, notebook.ToJupyterJson());
        TestContext.AddResultFile(path);
        TestContext.WriteLine($"Executed notebook: {path}");
    }

    private static async Task<CellOutput> RunCellAsync(Kernel kernel, int index, string code)
    {
        var watch = Stopwatch.StartNew();
        var cpu = Process.GetCurrentProcess().TotalProcessorTime;
        var run = kernel.SendAsync(new SubmitCode(code));
        var finished = await Task.WhenAny(run, Task.Delay(CellTimeout));
        Assert.AreSame(run, finished, $"Cell {index} did not finish within {CellTimeout.TotalMinutes} min:\n{code}");
        var result = await run;

        var text = new StringBuilder();
        var displays = new List<Display>();
        var byId = new Dictionary<string, Display>();
        var errors = new List<string>();
        foreach (var e in result.Events)
        {
            switch (e)
            {
                case CommandFailed failed:
                    errors.Add($"CommandFailed: {failed.Message}\n{failed.Exception}");
                    break;
                case DiagnosticsProduced diagnostics:
                    errors.AddRange(diagnostics.Diagnostics.Where(d => d.Severity == Microsoft.CodeAnalysis.DiagnosticSeverity.Error).Select(d => $"error: {d}"));
                    break;
                case StandardErrorValueProduced stderr:
                    text.Append(string.Concat(stderr.FormattedValues.Where(v => v.MimeType == "text/plain").Select(v => v.Value)));
                    break;
                case DisplayedValueUpdated updated: // DisplayedValue.Update: replaces the display of the same id
                    if (updated.ValueId is { } id && byId.TryGetValue(id, out var shown))
                    {
                        shown.Versions.Add(HtmlOf(updated));
                    }
                    else
                    {
                        // Jupyter ignores such an update and VS Code adds it as a new output: nothing is replaced in place.
                        errors.Add($"DisplayedValueUpdated for display '{updated.ValueId}', which this cell never showed (its id differs from every displayed value's).");
                    }

                    break;
                case DisplayEvent display: // standard output, display(...) and return values
                    text.Append(string.Concat(display.FormattedValues.Where(v => v.MimeType == "text/plain").Select(v => v.Value)));
                    if (display.FormattedValues.Any(v => v.MimeType == "text/html"))
                    {
                        var added = new Display([HtmlOf(display)]);
                        displays.Add(added);
                        if (display is DisplayedValueProduced { ValueId: { } valueId })
                        {
                            byId[valueId] = added;
                        }
                    }

                    break;
            }
        }

        Assert.IsEmpty(errors, $"Cell {index} failed:\n{string.Join("\n", errors)}\n--- code:\n{code}\n--- output:\n{text}");
        return new CellOutput(code, text.ToString(), displays, watch.Elapsed, Process.GetCurrentProcess().TotalProcessorTime - cpu);
    }

    private static string HtmlOf(DisplayEvent display) =>
        string.Concat(display.FormattedValues.Where(v => v.MimeType == "text/html").Select(v => v.Value));

    private static void AssertKeyOutputs(List<CellOutput> outputs)
    {
        var text = string.Concat(outputs.Select(o => o.Text));

        // Pretraining: live progress, then the reconstruction grid and the training curves shown inline as PNGs.
        Assert.Contains("Pretrained in", text);
        AssertLiveProgress(outputs, "BootMaePretrain(", "Pretraining");
        var preview = outputs.Single(o => o.Code.Contains("previewPath", StringComparison.Ordinal) && o.Code.Contains("display(", StringComparison.Ordinal));
        Assert.IsTrue(preview.Html.Any(h => h.Contains("data:image/png;base64,iVBORw0KGgo", StringComparison.Ordinal)), "The reconstruction grid was not displayed as an inline PNG.");
        var curves = outputs.Single(o => o.Code.Contains("BootMaePictures.TrainingCurves(", StringComparison.Ordinal));
        Assert.IsTrue(curves.Html.Any(h => h.Contains("data:image/png;base64,iVBORw0KGgo", StringComparison.Ordinal)), "The training curves were not displayed as an inline PNG.");

        // Fine-tuning: live progress.
        AssertLiveProgress(outputs, "BootMaeImageClassification(", "Fine-tuning");

        // Evaluation: the tiny model must beat chance (10%) clearly.
        var accuracy = Regex.Match(text, @"Micro accuracy: ([0-9.]+)\s?%");
        Assert.IsTrue(accuracy.Success, $"No micro accuracy in the output:\n{text}");
        var percent = double.Parse(accuracy.Groups[1].Value, CultureInfo.InvariantCulture);
        Assert.IsGreaterThan(30.0, percent, $"Test accuracy {percent}% is too close to chance.");
        Assert.Contains("Confusion table", text);

        // Save, load and predict.
        Assert.Contains("Loaded; input columns:", text);
        Assert.IsTrue(outputs.SelectMany(o => o.Html).Any(h => h.Contains("<th>Predicted</th>", StringComparison.Ordinal) && h.Contains("data:image/png;base64,", StringComparison.Ordinal)),
            "The prediction table was not displayed.");
    }

    /// <summary>
    /// The training cell that uses <paramref name="component"/> shows one display that is updated in place while it
    /// trains (loss, images/s and ETA before the end) and ends in its final state: every epoch and step done, one row
    /// per epoch, "done".
    /// </summary>
    private static void AssertLiveProgress(List<CellOutput> outputs, string component, string title)
    {
        var cell = outputs.Single(o => o.Code.Contains(component, StringComparison.Ordinal) && o.Code.Contains(".Fit(", StringComparison.Ordinal));
        var live = cell.Displays.Where(d => d.Versions.Count > 1).ToList();
        Assert.HasCount(1, live, $"The {title} cell must show one display updated in place (Display(...).Update); it showed {cell.Displays.Count} displays, {live.Count} of them updated.");
        var versions = live[0].Versions;
        var final = versions[^1];
        Assert.Contains($"<b>{title}</b>", final, $"The {title} progress display does not name its run:\n{final}");
        Assert.Contains("done in", final, $"The {title} progress display did not end in its final state:\n{final}");

        var epoch = Regex.Match(final, @"epoch (\d+)/(\d+)");
        var step = Regex.Match(final, @"step (\d+)/(\d+)");
        Assert.IsTrue(epoch.Success && step.Success, $"The final {title} progress shows no epoch or step counter:\n{final}");
        Assert.AreEqual(epoch.Groups[2].Value, epoch.Groups[1].Value, $"The final {title} progress is not at the last epoch:\n{final}");
        Assert.AreEqual(step.Groups[2].Value, step.Groups[1].Value, $"The final {title} progress is not at the last step:\n{final}");
        var epochs = int.Parse(epoch.Groups[2].Value, CultureInfo.InvariantCulture);
        Assert.AreEqual(epochs, Regex.Matches(final, "<tr><td>Train</td>").Count, $"The final {title} progress must hold one row per training epoch:\n{final}");

        // Live: updated at least once per epoch, and showing the rate and the ETA while it ran.
        Assert.IsGreaterThanOrEqualTo(epochs, versions.Count - 1, $"The {title} progress display was updated only {versions.Count - 1} times in {epochs} epochs.");
        Assert.IsTrue(versions.Take(versions.Count - 1).Any(v => v.Contains("img/s", StringComparison.Ordinal) && v.Contains("ETA ", StringComparison.Ordinal)),
            $"No {title} progress update before the end showed images/s and the ETA.");
    }

    private static void TryDelete(string directory)
    {
        try
        {
            Directory.Delete(directory, recursive: true);
        }
        catch (IOException)
        {
            // Best effort: a leftover temp folder must not fail the test.
        }
        catch (UnauthorizedAccessException)
        {
        }
    }

    private sealed record CellOutput(string Code, string Text, List<Display> Displays, TimeSpan Elapsed, TimeSpan Cpu)
    {
        /// <summary>The HTML of every display in its final state, in order.</summary>
        public IEnumerable<string> Html => Displays.Select(d => d.Versions[^1]);
    }

    /// <summary>One HTML output of a cell: what it first showed and each in-place update, in order.</summary>
    private sealed record Display(List<string> Versions);
}
