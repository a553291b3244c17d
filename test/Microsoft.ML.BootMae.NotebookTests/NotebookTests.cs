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
using Microsoft.VisualStudio.TestTools.UnitTesting;

[assembly: Parallelize(Workers = 1, Scope = ExecutionScope.ClassLevel)]

namespace Microsoft.ML.BootMae.NotebookTests;

/// <summary>
/// Runs samples/notebooks/BootMaeImageClassification.ipynb in-process with a .NET Interactive C# kernel, cell by cell,
/// and fails on any failed cell or compiler error, so the notebook cannot rot.
/// </summary>
/// <remarks>
/// The only substitution: the notebook's setup cell (<c>#r "nuget: Microsoft.ML.BootMae, ..."</c> and
/// <c>#r "nuget: TorchSharp-cpu, ..."</c>) becomes <c>#r "&lt;this test's bin&gt;/X.dll"</c> for the library and
/// its ML.NET and TorchSharp assemblies, which this project builds from source (a ProjectReference, plus
/// TorchSharp-cpu through BootMaeUsesTorchRuntime). Every other cell runs verbatim.
/// </remarks>
[TestClass]
public sealed class NotebookTests
{
    private const string NotebookFile = "BootMaeImageClassification.ipynb";
    private static readonly TimeSpan CellTimeout = TimeSpan.FromMinutes(4); // the test's only time limit

    public TestContext TestContext { get; set; } = null!;

    [TestMethod]
    [TestCategory("Notebook")]
    public async Task ImageClassificationNotebookRunsCellByCell()
    {
        var notebook = Notebook.Parse(File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "notebooks", NotebookFile)));
        var cells = notebook.Elements.Where(e => e.KernelName is "csharp" or "C#").ToList();
        Assert.IsGreaterThan(5, cells.Count, $"Too few C# cells in {NotebookFile}: {cells.Count}.");
        var markdown = string.Join("\n", notebook.Elements.Where(e => e.KernelName == "markdown").Select(e => e.Contents));
        Assert.Contains("test/Microsoft.ML.BootMae.NotebookTests", markdown, "The notebook must say that CI replaces its setup cell.");

        var setup = cells[0].Contents;
        Assert.Contains("#r \"nuget: Microsoft.ML.BootMae,", setup, "The first C# cell must reference the package.");
        Assert.Contains("#r \"nuget: TorchSharp-cpu,", setup, "The first C# cell must reference the CPU runtime.");
        var otherLines = setup.Split('\n').Select(l => l.Trim()).Where(l => l.Length > 0 && !l.StartsWith("#r \"nuget:", StringComparison.Ordinal)).ToList();
        Assert.IsEmpty(otherLines, $"The setup cell is replaced in CI, so it must hold only #r \"nuget: ...\" lines, not: {string.Join(" | ", otherLines)}");

        var temp = Path.Combine(Path.GetTempPath(), "bootmae-notebook-test-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(temp);
        var previousTemp = Environment.GetEnvironmentVariable("TMPDIR");
        Environment.SetEnvironmentVariable("TMPDIR", temp); // the notebook works under Path.GetTempPath(): keep runs apart
        var outputs = new List<CellOutput>();
        var total = Stopwatch.StartNew();
        try
        {
            using var kernel = new CSharpKernel().UseKernelHelpers();
            var codes = cells.Select(c => c.Contents).ToList();
            codes[0] = LocalReferences();
            for (var i = 0; i < codes.Count; i++)
            {
                var output = await RunCellAsync(kernel, i, codes[i]);
                outputs.Add(output);
                TestContext.WriteLine($"--- cell {i} ({output.Elapsed.TotalSeconds:F1} s)\n{output.Text}");
                RecordOutputs(cells[i], output);
            }
        }
        finally
        {
            Environment.SetEnvironmentVariable("TMPDIR", previousTemp);
            TryDelete(temp);
            SaveExecutedNotebook(notebook);
        }

        TestContext.WriteLine($"Notebook ran in {total.Elapsed.TotalSeconds:F0} s.");
        AssertKeyOutputs(outputs);
    }

    private static void RecordOutputs(InteractiveDocumentElement cell, CellOutput output)
    {
        if (output.Text.Length > 0)
        {
            cell.Outputs.Add(new TextElement(output.Text));
        }

        foreach (var html in output.Html)
        {
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

    /// <summary>The setup cell for CI: #r of the assemblies built into this test's output folder.</summary>
    private static string LocalReferences()
    {
        var bin = AppContext.BaseDirectory;
        var test = typeof(NotebookTests).Assembly.GetName().Name + ".dll";
        var assemblies = Directory.GetFiles(bin, "Microsoft.ML*.dll").Concat(Directory.GetFiles(bin, "TorchSharp*.dll"))
            .Where(p => !Path.GetFileName(p).Equals(test, StringComparison.OrdinalIgnoreCase))
            .Order(StringComparer.Ordinal)
            .ToList();
        Assert.IsTrue(assemblies.Any(p => Path.GetFileName(p) == "Microsoft.ML.BootMae.dll"), $"Microsoft.ML.BootMae.dll is missing from {bin}.");
        return string.Join("\n", assemblies.Select(p => $"#r \"{p}\""));
    }

    private static async Task<CellOutput> RunCellAsync(Kernel kernel, int index, string code)
    {
        var watch = Stopwatch.StartNew();
        var run = kernel.SendAsync(new SubmitCode(code));
        var finished = await Task.WhenAny(run, Task.Delay(CellTimeout));
        Assert.AreSame(run, finished, $"Cell {index} did not finish within {CellTimeout.TotalMinutes} min:\n{code}");
        var result = await run;

        var text = new StringBuilder();
        var html = new List<string>();
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
                case DisplayEvent display: // standard output, display(...) and return values
                    text.Append(string.Concat(display.FormattedValues.Where(v => v.MimeType == "text/plain").Select(v => v.Value)));
                    html.AddRange(display.FormattedValues.Where(v => v.MimeType == "text/html").Select(v => v.Value));
                    break;
            }
        }

        Assert.IsEmpty(errors, $"Cell {index} failed:\n{string.Join("\n", errors)}\n--- code:\n{code}\n--- output:\n{text}");
        return new CellOutput(code, text.ToString(), html, watch.Elapsed);
    }

    private static void AssertKeyOutputs(List<CellOutput> outputs)
    {
        var text = string.Concat(outputs.Select(o => o.Text));

        // Pretraining: epoch reports, then the reconstruction grid shown inline as a PNG.
        Assert.Contains("Pretrained in", text);
        var preview = outputs.Single(o => o.Code.Contains("previewPath", StringComparison.Ordinal) && o.Code.Contains("display(", StringComparison.Ordinal));
        Assert.IsTrue(preview.Html.Any(h => h.Contains("data:image/png;base64,iVBORw0KGgo", StringComparison.Ordinal)), "The reconstruction grid was not displayed as an inline PNG.");

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

    private sealed record CellOutput(string Code, string Text, List<string> Html, TimeSpan Elapsed);
}
