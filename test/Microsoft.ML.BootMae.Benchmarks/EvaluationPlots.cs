using System.Globalization;
using OxyPlot;
using OxyPlot.Annotations;
using OxyPlot.Axes;
using OxyPlot.Legends;
using OxyPlot.Series;

namespace Microsoft.ML.BootMae.Benchmarks;

/// <summary>
/// The charts of the evaluation (issue 9): accuracy against pretraining time and accuracy against the number of labels,
/// drawn with OxyPlot and written as SVG (OxyPlot.Core's exporter, no native code). Each point is the mean over the
/// seeds of one group of rows; the whiskers run from the lowest to the highest seed.
/// </summary>
internal static class EvaluationPlots
{
    private const double Width = 960;
    private const double Height = 640;

    private static readonly CultureInfo C = CultureInfo.InvariantCulture;

    // One colour per method, one line and marker style per evaluation (tab10 colours, as matplotlib's default).
    private static readonly Dictionary<string, OxyColor> MethodColors = new(StringComparer.Ordinal)
    {
        ["BootMAE"] = OxyColor.FromRgb(0x1F, 0x77, 0xB4),
        ["MAE"] = OxyColor.FromRgb(0xFF, 0x7F, 0x0E),
        ["random init"] = OxyColor.FromRgb(0x7F, 0x7F, 0x7F),
        ["raw pixels"] = OxyColor.FromRgb(0x2C, 0xA0, 0x2C),
        ["from scratch, equal fine-tune epochs"] = OxyColor.FromRgb(0xD6, 0x27, 0x28),
        ["from scratch, equal total steps"] = OxyColor.FromRgb(0x94, 0x67, 0xBD),
    };

    private static readonly OxyColor[] Spare =
    [
        OxyColor.FromRgb(0x8C, 0x56, 0x4B), OxyColor.FromRgb(0xE3, 0x77, 0xC2), OxyColor.FromRgb(0xBC, 0xBD, 0x22), OxyColor.FromRgb(0x17, 0xBE, 0xCF),
    ];

    /// <summary>
    /// Writes <c>results-pretraining-minutes.svg</c>, <c>results-pretraining-steps.svg</c> and <c>results-labels.svg</c>
    /// into <paramref name="folder"/> and returns their paths.
    /// </summary>
    public static IReadOnlyList<string> Write(IReadOnlyList<EvaluationRow> rows, string folder)
    {
        Directory.CreateDirectory(folder);
        var written = new List<string>
        {
            Save(AgainstPretraining(rows, minutes: true), Path.Combine(folder, "results-pretraining-minutes.svg")),
            Save(AgainstPretraining(rows, minutes: false), Path.Combine(folder, "results-pretraining-steps.svg")),
            Save(AgainstLabels(rows), Path.Combine(folder, "results-labels.svg")),
        };
        foreach (var path in written)
        {
            Console.WriteLine($"Chart: {path}");
        }

        return written;
    }

    /// <summary>
    /// Accuracy against pretraining wall time (or steps): one series per pretrained method and evaluation (best-block
    /// probe, fine-tuning per label count), and horizontal references for what needs no pretraining.
    /// </summary>
    internal static PlotModel AgainstPretraining(IReadOnlyList<EvaluationRow> rows, bool minutes)
    {
        var model = NewModel(
            minutes ? "Accuracy against pretraining time" : "Accuracy against pretraining steps",
            "mean over seeds, whiskers min–max; dashed lines: no pretraining",
            LegendPosition.BottomCenter);
        var x = new LinearAxis
        {
            Position = AxisPosition.Bottom, Title = minutes ? "pretraining wall time (minutes, as logged)" : "pretraining steps", Minimum = 0,
            MajorGridlineStyle = LineStyle.Solid, MajorGridlineColor = Grid, MaximumPadding = 0.08, AxisTitleDistance = 6,
        };
        model.Axes.Add(x);
        model.Axes.Add(AccuracyAxis());

        double Position(IReadOnlyList<EvaluationRow> group) => minutes ? group.Average(r => r.pretrain_seconds) / 60 : group.Average(r => (double)r.pretrain_steps);
        var pretrained = rows.Where(r => r.pretrain_steps > 0 && Kind(r) is Evaluations.BestProbe or Evaluations.FineTune).ToList();
        foreach (var series in pretrained.GroupBy(r => (r.method, Kind: Kind(r), Labels: Kind(r) == Evaluations.FineTune ? r.labels : 0)).OrderBy(g => g.Key.method, StringComparer.Ordinal).ThenBy(g => g.Key.Kind).ThenBy(g => g.Key.Labels))
        {
            var (method, kind, labels) = series.Key;
            string title = kind == Evaluations.BestProbe ? $"{method}, linear probe (best block)" : $"{method}, fine-tune, {labels.ToString("N0", C)} labels";
            var points = series.GroupBy(r => r.pretrain_steps).OrderBy(g => g.Key).Select(g => Stat(g.ToList(), Position(g.ToList()))).ToList();
            AddSeries(model, title, ColorOf(method), points, Style(kind, labels), markersOnly: false);
        }

        // References: what the same evaluation gives with no pretraining (mean, with a band over the seeds).
        var references = rows.Where(r => r.pretrain_steps == 0).GroupBy(r => (r.method, Kind: Kind(r), r.labels))
            .Where(g => g.Key.Kind is Evaluations.BestProbe or Evaluations.PixelProbe or Evaluations.ScratchEqualEpochs)
            .Select(g =>
            {
                var list = g.ToList();
                string text = g.Key.Kind switch
                {
                    Evaluations.PixelProbe => "raw pixels, linear model",
                    Evaluations.BestProbe => $"{g.Key.method}, linear probe (best block)",
                    _ => $"from scratch, {g.Key.labels.ToString("N0", C)} labels, equal fine-tune epochs",
                };
                return (Text: text, Color: ColorOf(g.Key.Kind == Evaluations.ScratchEqualEpochs ? "from scratch, equal fine-tune epochs" : g.Key.method), Stats: Stat(list, 0));
            })
            .OrderBy(r => r.Stats.Mean)
            .ToList();
        for (int i = 0; i < references.Count; i++)
        {
            var (text, color, s) = references[i];
            model.Annotations.Add(new RectangleAnnotation { MinimumY = s.Min, MaximumY = s.Max, Fill = OxyColor.FromAColor(28, color), Layer = AnnotationLayer.BelowSeries });
            model.Annotations.Add(new LineAnnotation
            {
                Type = LineAnnotationType.Horizontal, Y = s.Mean, Color = color, LineStyle = LineStyle.Dash, StrokeThickness = 1.5,
                Text = $"{text}: {s.Mean.ToString("F1", C)}%", TextColor = color, FontSize = 11,
                // Each label just under its line, towards the left where short runs have few points; neighbouring lines
                // stagger theirs along x so that close lines do not overprint.
                TextLinePosition = i % 2 == 0 ? 0 : 0.4, TextHorizontalAlignment = HorizontalAlignment.Left, TextMargin = 6, TextPadding = 4,
                TextVerticalAlignment = VerticalAlignment.Top,
            });
        }

        return model;
    }

    /// <summary>
    /// Accuracy against the number of labels (log scale): fine-tuning of each pretrained method (its longest
    /// pretraining), from scratch at equal fine-tune epochs and at equal total steps, and the linear probes.
    /// </summary>
    internal static PlotModel AgainstLabels(IReadOnlyList<EvaluationRow> rows)
    {
        // A method pretrained for several budgets is shown at its longest one.
        var longest = rows.Where(r => r.pretrain_steps > 0).GroupBy(r => r.method).ToDictionary(g => g.Key, g => g.Max(r => r.pretrain_steps), StringComparer.Ordinal);
        var shown = rows.Where(r => r.pretrain_steps == 0 || r.pretrain_steps == longest[r.method]).ToList();
        string budgets = string.Join(", ", longest.OrderBy(p => p.Key, StringComparer.Ordinal).Select(p => $"{p.Key} {p.Value.ToString("N0", C)} steps"));
        var model = NewModel(
            "Accuracy against number of labels",
            "mean over seeds, whiskers min–max" + (budgets.Length > 0 ? $"; pretraining: {budgets}" : string.Empty),
            LegendPosition.BottomCenter);
        model.Axes.Add(new LogarithmicAxis
        {
            Position = AxisPosition.Bottom, Title = "labelled images (log scale)", MajorGridlineStyle = LineStyle.Solid, MajorGridlineColor = Grid, AxisTitleDistance = 6,
            MinimumPadding = 0.08, MaximumPadding = 0.08, StringFormat = "#,0",
        });
        model.Axes.Add(AccuracyAxis());

        foreach (var g in shown.Where(r => r.pretrain_steps > 0 && Kind(r) == Evaluations.FineTune).GroupBy(r => r.method).OrderBy(g => g.Key, StringComparer.Ordinal))
        {
            AddSeries(model, $"{g.Key}, fine-tune", ColorOf(g.Key), ByLabels(g), (LineStyle.Solid, MarkerType.Circle), markersOnly: false);
        }

        foreach (var kind in new[] { Evaluations.ScratchEqualEpochs, Evaluations.ScratchEqualSteps })
        {
            var list = shown.Where(r => Kind(r) == kind).ToList();
            if (list.Count > 0)
            {
                string name = kind == Evaluations.ScratchEqualEpochs ? "from scratch, equal fine-tune epochs" : "from scratch, equal total steps";
                AddSeries(model, name, ColorOf(name), ByLabels(list), (kind == Evaluations.ScratchEqualEpochs ? LineStyle.Dash : LineStyle.Dot, MarkerType.Square), markersOnly: false);
            }
        }

        // Probes use one fixed labelled set (a point per method): markers only, moved apart a little along x so that
        // close values stay readable.
        var probes = shown.Where(r => Kind(r) is Evaluations.BestProbe or Evaluations.PixelProbe).GroupBy(r => r.method).OrderBy(g => g.Key, StringComparer.Ordinal).ToList();
        for (int k = 0; k < probes.Count; k++)
        {
            var g = probes[k];
            string title = g.Key == "raw pixels" ? "raw pixels, linear model" : $"{g.Key}, linear probe (best block)";
            double dodge = Math.Pow(1.04, k - ((probes.Count - 1) / 2.0));
            AddSeries(model, title, ColorOf(g.Key), ByLabels(g).Select(p => p with { X = p.X * dodge }).ToList(), (LineStyle.None, MarkerType.Diamond), markersOnly: true);
        }

        return model;
    }

    /// <summary>Writes <paramref name="model"/> as an SVG document and returns the path.</summary>
    internal static string Save(PlotModel model, string path)
    {
        using var stream = File.Create(path);
        FitAccuracyAxis(model);

        // Text is measured with the PDF standard fonts' metrics (Helvetica = Arial's, no native code), and placed with
        // explicit offsets rather than dominant-baseline, which some SVG renderers ignore.
        new SvgExporter
        {
            Width = Width, Height = Height, TextMeasurer = new NominalTextMeasurer(), UseVerticalTextAlignmentWorkaround = true,
        }.Export(model, stream);
        return Path.GetFullPath(path);
    }

    // Annotations do not widen an axis: the accuracy axis spans every point, whisker and reference band.
    private static void FitAccuracyAxis(PlotModel model)
    {
        var values = model.Series.OfType<LineSeries>().SelectMany(s => s.Points).Where(p => p.IsDefined()).Select(p => p.Y)
            .Concat(model.Series.OfType<ScatterSeries>().SelectMany(s => s.Points).Select(p => p.Y))
            .Concat(model.Annotations.OfType<RectangleAnnotation>().SelectMany(a => new[] { a.MinimumY, a.MaximumY }))
            .Where(double.IsFinite).ToList();
        if (values.Count == 0)
        {
            return;
        }

        var axis = model.Axes.Single(a => a.Position == AxisPosition.Left);
        axis.Minimum = Math.Max(0, (Math.Floor(values.Min() / 5) * 5) - 2);
        axis.Maximum = Math.Min(100, (Math.Ceiling(values.Max() / 5) * 5) + 2);
    }

    private static readonly OxyColor Grid = OxyColor.FromRgb(0xE6, 0xE6, 0xE6);

    private enum Evaluations
    {
        BestProbe,
        LastProbe,
        PixelProbe,
        FineTune,
        ScratchEqualEpochs,
        ScratchEqualSteps,
        Other,
    }

    private static Evaluations Kind(EvaluationRow r) => r.evaluation switch
    {
        _ when r.evaluation.StartsWith("linear probe, best block", StringComparison.Ordinal) => Evaluations.BestProbe,
        "linear probe, last block" => Evaluations.LastProbe,
        "linear probe" => Evaluations.PixelProbe,
        "fine-tune" => Evaluations.FineTune,
        "from scratch, equal fine-tune epochs" => Evaluations.ScratchEqualEpochs,
        "from scratch, equal total steps" => Evaluations.ScratchEqualSteps,
        _ => Evaluations.Other,
    };

    private sealed record Point(double X, double Mean, double Min, double Max, int Count);

    private static Point Stat(IReadOnlyList<EvaluationRow> group, double x) =>
        new(x, group.Average(r => r.accuracy) * 100, group.Min(r => r.accuracy) * 100, group.Max(r => r.accuracy) * 100, group.Count);

    private static List<Point> ByLabels(IEnumerable<EvaluationRow> rows) =>
        rows.GroupBy(r => r.labels).OrderBy(g => g.Key).Select(g => Stat(g.ToList(), g.Key)).ToList();

    private static (LineStyle Line, MarkerType Marker) Style(Evaluations kind, int labels) => kind switch
    {
        Evaluations.BestProbe => (LineStyle.Solid, MarkerType.Circle),
        _ => labels <= 100 ? (LineStyle.Dash, MarkerType.Square) : (LineStyle.Dot, MarkerType.Triangle),
    };

    private static OxyColor ColorOf(string name)
    {
        if (!MethodColors.TryGetValue(name, out var color))
        {
            // A method this file does not know (e.g. an encoder loaded under its own name): the next spare colour.
            color = Spare[(MethodColors.Count - 6) % Spare.Length];
            MethodColors[name] = color;
        }

        return color;
    }

    private static PlotModel NewModel(string title, string subtitle, LegendPosition legend)
    {
        var model = new PlotModel
        {
            Title = title, Subtitle = subtitle, Background = OxyColors.White, DefaultFont = "Arial", TitleFontSize = 16, SubtitleFontSize = 12,
            PlotAreaBorderColor = OxyColor.FromRgb(0x99, 0x99, 0x99),
        };
        model.Legends.Add(new Legend
        {
            LegendPosition = legend, LegendPlacement = LegendPlacement.Outside, LegendBackground = OxyColors.White, LegendBorder = OxyColor.FromRgb(0xC8, 0xC8, 0xC8),
            LegendFontSize = 12, LegendSymbolLength = 28, LegendOrientation = LegendOrientation.Horizontal, LegendItemSpacing = 16,
        });
        return model;
    }

    private static LinearAxis AccuracyAxis() => new()
    {
        Position = AxisPosition.Left, Title = "test accuracy (%)", MajorGridlineStyle = LineStyle.Solid, MajorGridlineColor = Grid, AxisTitleDistance = 6,
        MinimumPadding = 0.06, MaximumPadding = 0.06, StringFormat = "0",
    };

    // A line through the means, and one whisker series (vertical segments with caps, broken by undefined points)
    // that stays out of the legend.
    private static void AddSeries(PlotModel model, string title, OxyColor color, List<Point> points, (LineStyle Line, MarkerType Marker) style, bool markersOnly)
    {
        if (markersOnly)
        {
            var markers = new ScatterSeries { Title = title, MarkerFill = color, MarkerStroke = color, MarkerType = style.Marker, MarkerSize = 5.5 };
            markers.Points.AddRange(points.Select(p => new ScatterPoint(p.X, p.Mean)));
            model.Series.Add(markers);
        }
        else
        {
            var line = new LineSeries
            {
                Title = title, Color = color, MarkerFill = color, MarkerStroke = color, MarkerType = style.Marker, MarkerSize = 4.5, LineStyle = style.Line, StrokeThickness = 2,
            };
            line.Points.AddRange(points.Select(p => new DataPoint(p.X, p.Mean)));
            model.Series.Add(line);
        }

        var whiskers = new LineSeries
        {
            Color = color, StrokeThickness = 1.2, RenderInLegend = false, LineStyle = LineStyle.Solid,
            MarkerType = MarkerType.Custom, MarkerOutline = [new ScreenPoint(-1, 0), new ScreenPoint(1, 0)], MarkerSize = 5, MarkerStroke = color, MarkerStrokeThickness = 1.2,
        };
        foreach (var p in points.Where(p => p.Count > 1 && p.Max > p.Min))
        {
            whiskers.Points.Add(new DataPoint(p.X, p.Min));
            whiskers.Points.Add(new DataPoint(p.X, p.Max));
            whiskers.Points.Add(DataPoint.Undefined);
        }

        if (whiskers.Points.Count > 0)
        {
            model.Series.Add(whiskers);
        }
    }

    /// <summary>
    /// OxyPlot's PDF context measures text in points (1/72 inch) although the plot's font sizes and the SVG are in
    /// nominal units (1/96 inch), so on its own it reports text 25% too small and legends overlap; this asks it at
    /// the matching size. Only measuring is used by the SVG exporter.
    /// </summary>
    private sealed class NominalTextMeasurer : RenderContextBase
    {
        private readonly PdfRenderContext _pdf = new(Width, Height, OxyColors.White);

        public override OxySize MeasureText(string text, string fontFamily, double fontSize, double fontWeight) =>
            _pdf.MeasureText(text, fontFamily, fontSize * 96 / 72, fontWeight);

        public override void DrawText(ScreenPoint p, string text, OxyColor fill, string fontFamily, double fontSize, double fontWeight, double rotation,
            HorizontalAlignment halign, VerticalAlignment valign, OxySize? maxSize) => throw new NotSupportedException(MeasuresOnly);

        public override int ClipCount => 0;

        private const string MeasuresOnly = "This context only measures text.";

        public override void DrawLine(IList<ScreenPoint> points, OxyColor stroke, double thickness, EdgeRenderingMode edgeRenderingMode, double[] dashArray, LineJoin lineJoin) =>
            throw new NotSupportedException(MeasuresOnly);

        public override void DrawPolygon(IList<ScreenPoint> points, OxyColor fill, OxyColor stroke, double thickness, EdgeRenderingMode edgeRenderingMode, double[] dashArray, LineJoin lineJoin) =>
            throw new NotSupportedException(MeasuresOnly);

        public override void PopClip() => throw new NotSupportedException(MeasuresOnly);

        public override void PushClip(OxyRect clippingRectangle) => throw new NotSupportedException(MeasuresOnly);
    }
}
