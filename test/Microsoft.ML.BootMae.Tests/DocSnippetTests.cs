using System.Text.RegularExpressions;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.BootMae.Tests;

/// <summary>
/// Keeps the C# in README.md and docs/*.md compiled: every ```csharp block must be preceded by
/// <c>&lt;!-- snippet: name --&gt;</c> and equal the <c>#region snippet:name</c> of that name in DocSnippets/*.cs
/// (indentation and trailing whitespace normalised). The regions themselves are compiled with the tests, and
/// DocSnippetRunTests executes the cheap ones.
/// </summary>
[TestClass]
public sealed partial class DocSnippetTests
{
    [GeneratedRegex(@"^\s*#region snippet:(?<name>[A-Za-z0-9_.-]+)\s*$")]
    private static partial Regex RegionStart();

    [GeneratedRegex(@"^\s*#endregion\b")]
    private static partial Regex RegionEnd();

    [GeneratedRegex(@"^\s*<!--\s*snippet:\s*(?<name>[A-Za-z0-9_.-]+)\s*-->\s*$")]
    private static partial Regex Marker();

    [GeneratedRegex(@"^\s*```")]
    private static partial Regex Fence();

    internal static string RepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Microsoft.ML.BootMae.sln")))
            {
                return dir.FullName;
            }
        }

        throw new InvalidOperationException($"No folder above '{AppContext.BaseDirectory}' holds Microsoft.ML.BootMae.sln.");
    }

    /// <summary>Removes the common indentation, trailing whitespace and leading/trailing blank lines.</summary>
    internal static string Normalize(IEnumerable<string> lines)
    {
        var list = lines.Select(l => l.Replace("\t", "    ", StringComparison.Ordinal).TrimEnd()).ToList();
        while (list.Count > 0 && list[0].Length == 0)
        {
            list.RemoveAt(0);
        }

        while (list.Count > 0 && list[^1].Length == 0)
        {
            list.RemoveAt(list.Count - 1);
        }

        int indent = list.Where(l => l.Length > 0).Select(l => l.Length - l.TrimStart().Length).DefaultIfEmpty(0).Min();
        return string.Join("\n", list.Select(l => l.Length == 0 ? l : l[indent..]));
    }

    internal static Dictionary<string, string> ReadRegions(string root)
    {
        var regions = new Dictionary<string, string>(StringComparer.Ordinal);
        var folder = Path.Combine(root, "test", "Microsoft.ML.BootMae.Tests", "DocSnippets");
        foreach (var file in Directory.GetFiles(folder, "*.cs").OrderBy(f => f, StringComparer.Ordinal))
        {
            var lines = File.ReadAllLines(file);
            for (int i = 0; i < lines.Length; i++)
            {
                var start = RegionStart().Match(lines[i]);
                if (!start.Success)
                {
                    continue;
                }

                string name = start.Groups["name"].Value;
                int end = Array.FindIndex(lines, i + 1, l => RegionEnd().IsMatch(l));
                if (end < 0)
                {
                    throw new InvalidDataException($"{file}: region 'snippet:{name}' has no #endregion.");
                }

                if (!regions.TryAdd(name, Normalize(lines[(i + 1)..end])))
                {
                    throw new InvalidDataException($"{file}: snippet '{name}' is defined twice.");
                }

                i = end;
            }
        }

        return regions;
    }

    /// <summary>A fenced code block of a Markdown file: its language, marker (if any), text and line.</summary>
    internal sealed record CodeBlock(string File, int Line, string Language, string? Snippet, string Text);

    internal static List<CodeBlock> ReadCodeBlocks(string path)
    {
        var blocks = new List<CodeBlock>();
        var lines = File.ReadAllLines(path);
        for (int i = 0; i < lines.Length; i++)
        {
            if (!Fence().IsMatch(lines[i]))
            {
                continue;
            }

            string language = lines[i].Trim().TrimStart('`').Trim().ToLowerInvariant();
            int close = Array.FindIndex(lines, i + 1, l => Fence().IsMatch(l));
            if (close < 0)
            {
                throw new InvalidDataException($"{path}:{i + 1}: unclosed code fence.");
            }

            int previous = i - 1;
            while (previous >= 0 && lines[previous].Trim().Length == 0)
            {
                previous--;
            }

            var marker = previous >= 0 ? Marker().Match(lines[previous]) : Match.Empty;
            blocks.Add(new CodeBlock(Path.GetFileName(path), i + 1, language, marker.Success ? marker.Groups["name"].Value : null, Normalize(lines[(i + 1)..close])));
            i = close;
        }

        return blocks;
    }

    private static IEnumerable<string> MarkdownFiles(string root)
    {
        yield return Path.Combine(root, "README.md");
        var docs = Path.Combine(root, "docs");
        if (Directory.Exists(docs))
        {
            foreach (var file in Directory.GetFiles(docs, "*.md").OrderBy(f => f, StringComparer.Ordinal))
            {
                yield return file;
            }
        }
    }

    [TestMethod]
    public void EveryCSharpBlockInTheDocsIsACompiledSnippet()
    {
        string root = RepoRoot();
        var regions = ReadRegions(root);
        var problems = new List<string>();
        int checkedBlocks = 0;
        foreach (var file in MarkdownFiles(root))
        {
            foreach (var block in ReadCodeBlocks(file))
            {
                bool isCSharp = block.Language is "csharp" or "cs" or "c#";
                if (block.Snippet is null)
                {
                    if (isCSharp)
                    {
                        problems.Add($"{block.File}:{block.Line}: a ```csharp block without a <!-- snippet: name --> marker.");
                    }

                    continue;
                }

                if (!isCSharp)
                {
                    problems.Add($"{block.File}:{block.Line}: snippet '{block.Snippet}' marks a ```{block.Language} block; snippets are C#.");
                }
                else if (!regions.TryGetValue(block.Snippet, out var expected))
                {
                    problems.Add($"{block.File}:{block.Line}: snippet '{block.Snippet}' has no #region snippet:{block.Snippet} in DocSnippets/*.cs.");
                }
                else if (expected != block.Text)
                {
                    problems.Add($"{block.File}:{block.Line}: snippet '{block.Snippet}' differs from its region. Expected:\n{expected}\n--- found:\n{block.Text}");
                }

                checkedBlocks++;
            }
        }

        Assert.IsEmpty(problems, string.Join("\n\n", problems));
        Assert.IsGreaterThan(0, checkedBlocks, "no snippet was found in README.md or docs/*.md");
    }

    [TestMethod]
    public void EverySnippetRegionAppearsInTheDocs()
    {
        string root = RepoRoot();
        var used = MarkdownFiles(root).SelectMany(ReadCodeBlocks).Select(b => b.Snippet).OfType<string>().ToHashSet(StringComparer.Ordinal);
        var unused = ReadRegions(root).Keys.Where(k => !used.Contains(k)).OrderBy(k => k, StringComparer.Ordinal).ToList();

        Assert.IsEmpty(unused, "regions no document shows (remove them or show them): " + string.Join(", ", unused));
    }

    [TestMethod]
    public void NormalizeIgnoresIndentationAndTrailingWhitespace()
    {
        var indented = Normalize(new[] { "", "        var x = 1;  ", "        {", "            x++;", "        }", "   " });

        Assert.AreEqual("var x = 1;\n{\n    x++;\n}", indented);
    }
}
