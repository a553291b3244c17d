using System.Globalization;
using SkiaSharp;

namespace Microsoft.ML.BootMae.Visualization;

/// <summary>
/// Pictures of BootMAE pretraining as PNG files: reconstructions (like the MAE paper's figures), random versus
/// block-wise masks, and training curves. Drawn with SkiaSharp (the curves' charts with OxyPlot on SkiaSharp); each
/// method writes one PNG and returns its full path.
/// </summary>
/// <remarks>
/// Images are <c>float[]</c> in CHW order with values in [0, 1] (clamped; undo any normalisation first), with 1
/// (grey) or 3 (RGB) channels. Masks are <c>bool[]</c> over the patch grid, row-major, <c>true</c> = masked.
/// Text needs a font the platform's SkiaSharp font manager can find (on Linux, any font under /usr/share/fonts).
/// </remarks>
public static class BootMaePictures
{
    private const float HeaderSize = 15;

    /// <summary>
    /// Draws one row per image of <paramref name="architecture"/>'s input shape: the original, the masked input (masked
    /// patches grey), the pixel reconstruction, and the reconstruction with the visible patches pasted back, as in the MAE
    /// paper's figures.
    /// </summary>
    /// <param name="images">Original images, each Channels × ImageSize × ImageSize values in [0, 1].</param>
    /// <param name="masks">One mask per image over the patch grid, row-major, <c>true</c> = masked.</param>
    /// <param name="reconstructions">The regressor's pixel predictions, one per image, same shape as the images.</param>
    /// <param name="architecture">Gives the channels, the image side and the patch size.</param>
    /// <param name="path">PNG file to write; its folder is created if missing.</param>
    /// <param name="options">Title, row labels and tile size; <c>null</c> for none and the default size.</param>
    /// <returns>The full path of the PNG written.</returns>
    /// <exception cref="ArgumentException">An argument is null, empty, or of the wrong count or length.</exception>
    public static string ReconstructionGrid(IReadOnlyList<float[]> images, IReadOnlyList<bool[]> masks, IReadOnlyList<float[]> reconstructions,
        BootMaeArchitecture architecture, string path, BootMaePictureOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(architecture);
        return ReconstructionGrid(images, masks, reconstructions, architecture.Channels, architecture.ImageSize, architecture.ImageSize, architecture.PatchSize,
            path, options?.Title, options?.RowLabels, options?.TileSize);
    }

    /// <summary>
    /// Draws one row per image: the original, the masked input (masked patches grey), the pixel reconstruction, and
    /// the reconstruction with the visible patches pasted back, as in the MAE paper's figures. For images of an
    /// architecture's input shape the overload taking a <see cref="BootMaeArchitecture"/> and <see cref="BootMaePictureOptions"/> is shorter.
    /// </summary>
    /// <param name="images">Original images, each <paramref name="channels"/> × <paramref name="height"/> × <paramref name="width"/> values in [0, 1].</param>
    /// <param name="masks">One mask per image over the (height / patchSize) × (width / patchSize) patch grid, row-major, <c>true</c> = masked.</param>
    /// <param name="reconstructions">The regressor's pixel predictions, one per image, same shape as the images.</param>
    /// <param name="channels">Channels per image: 1 or 3.</param>
    /// <param name="height">Image height in pixels.</param>
    /// <param name="width">Image width in pixels.</param>
    /// <param name="patchSize">Side of a square patch in pixels; must divide height and width.</param>
    /// <param name="path">PNG file to write; its folder is created if missing.</param>
    /// <param name="title">Optional title above the grid.</param>
    /// <param name="rowLabels">Optional label per row (e.g. class names), drawn left of each row.</param>
    /// <param name="tileSize">Side in pixels of the longest image edge on screen; <c>null</c> zooms small images by an integer factor to at least 112 px.</param>
    /// <returns>The full path of the PNG written.</returns>
    /// <exception cref="ArgumentException">An argument is null, empty, or of the wrong count or length.</exception>
    public static string ReconstructionGrid(
        IReadOnlyList<float[]> images,
        IReadOnlyList<bool[]> masks,
        IReadOnlyList<float[]> reconstructions,
        int channels,
        int height,
        int width,
        int patchSize,
        string path,
        string? title = null,
        IReadOnlyList<string>? rowLabels = null,
        int? tileSize = null)
    {
        var (gridHeight, gridWidth) = PictureKit.CheckGeometry(channels, height, width, patchSize);
        PictureKit.CheckPath(path, nameof(path));
        var length = channels * height * width;
        var count = PictureKit.CheckItems(images, null, length, nameof(images), "CHW image");
        PictureKit.CheckItems(masks, count, gridHeight * gridWidth, nameof(masks), "patch mask");
        PictureKit.CheckItems(reconstructions, count, length, nameof(reconstructions), "CHW image");
        CheckRowLabels(rowLabels, count);

        var ratio = masks.Average(m => m.Count(x => x));
        string[] headers =
        [
            "Original",
            string.Create(CultureInfo.InvariantCulture, $"Masked ({100.0 * ratio / (gridHeight * gridWidth):0}%)"),
            "Reconstruction",
            "Recon. + visible",
        ];

        var scale = PictureKit.TileScale(tileSize, height, width);
        return DrawGrid(path, title, headers, rowLabels, count, width * scale, height * scale, (canvas, row, column, target) =>
        {
            switch (column)
            {
                case 0:
                    DrawImage(canvas, images[row], channels, height, width, target);
                    break;
                case 1:
                    DrawImage(canvas, images[row], channels, height, width, target);
                    PictureKit.DrawMask(canvas, masks[row], gridHeight, gridWidth, target);
                    break;
                case 2:
                    DrawImage(canvas, reconstructions[row], channels, height, width, target);
                    break;
                default:
                    DrawImage(canvas, Paste(images[row], reconstructions[row], masks[row], channels, height, width, patchSize), channels, height, width, target);
                    break;
            }
        });
    }

    /// <summary>
    /// Draws one row per image of <paramref name="architecture"/>'s input shape: the original, the image under a random
    /// mask and under a block-wise mask (as in BootMAE's Fig. 2, e.g. from <see cref="BootMaeMasks.Sample"/>), masked
    /// patches grey; the headers give each kind's mean masking ratio.
    /// </summary>
    /// <param name="images">Images, each Channels × ImageSize × ImageSize values in [0, 1].</param>
    /// <param name="randomMasks">One random mask per image over the patch grid, row-major, <c>true</c> = masked.</param>
    /// <param name="blockMasks">One block-wise mask per image over the patch grid, row-major, <c>true</c> = masked.</param>
    /// <param name="architecture">Gives the channels, the image side and the patch size.</param>
    /// <param name="path">PNG file to write; its folder is created if missing.</param>
    /// <param name="options">Title, row labels and tile size; <c>null</c> for none and the default size.</param>
    /// <returns>The full path of the PNG written.</returns>
    /// <exception cref="ArgumentException">An argument is null, empty, or of the wrong count or length.</exception>
    public static string MaskComparison(IReadOnlyList<float[]> images, IReadOnlyList<bool[]> randomMasks, IReadOnlyList<bool[]> blockMasks,
        BootMaeArchitecture architecture, string path, BootMaePictureOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(architecture);
        return MaskComparison(images, randomMasks, blockMasks, architecture.Channels, architecture.ImageSize, architecture.ImageSize, architecture.PatchSize,
            path, options?.Title, options?.RowLabels, options?.TileSize);
    }

    /// <summary>
    /// Draws one row per image: the original, the image under a random mask and under a block-wise mask (as in
    /// BootMAE's Fig. 2), masked patches grey; the headers give each kind's mean masking ratio. For images of an
    /// architecture's input shape the overload taking a <see cref="BootMaeArchitecture"/> and <see cref="BootMaePictureOptions"/> is shorter.
    /// </summary>
    /// <param name="images">Images, each <paramref name="channels"/> × <paramref name="height"/> × <paramref name="width"/> values in [0, 1].</param>
    /// <param name="randomMasks">One random mask per image over the patch grid, row-major, <c>true</c> = masked.</param>
    /// <param name="blockMasks">One block-wise mask per image over the patch grid, row-major, <c>true</c> = masked.</param>
    /// <param name="channels">Channels per image: 1 or 3.</param>
    /// <param name="height">Image height in pixels.</param>
    /// <param name="width">Image width in pixels.</param>
    /// <param name="patchSize">Side of a square patch in pixels; must divide height and width.</param>
    /// <param name="path">PNG file to write; its folder is created if missing.</param>
    /// <param name="title">Optional title above the grid.</param>
    /// <param name="rowLabels">Optional label per row, drawn left of each row.</param>
    /// <param name="tileSize">Side in pixels of the longest image edge on screen; <c>null</c> zooms small images by an integer factor to at least 112 px.</param>
    /// <returns>The full path of the PNG written.</returns>
    /// <exception cref="ArgumentException">An argument is null, empty, or of the wrong count or length.</exception>
    public static string MaskComparison(
        IReadOnlyList<float[]> images,
        IReadOnlyList<bool[]> randomMasks,
        IReadOnlyList<bool[]> blockMasks,
        int channels,
        int height,
        int width,
        int patchSize,
        string path,
        string? title = null,
        IReadOnlyList<string>? rowLabels = null,
        int? tileSize = null)
    {
        var (gridHeight, gridWidth) = PictureKit.CheckGeometry(channels, height, width, patchSize);
        PictureKit.CheckPath(path, nameof(path));
        var count = PictureKit.CheckItems(images, null, channels * height * width, nameof(images), "CHW image");
        PictureKit.CheckItems(randomMasks, count, gridHeight * gridWidth, nameof(randomMasks), "patch mask");
        PictureKit.CheckItems(blockMasks, count, gridHeight * gridWidth, nameof(blockMasks), "patch mask");
        CheckRowLabels(rowLabels, count);

        var patches = (double)(gridHeight * gridWidth);
        string[] headers =
        [
            "Original",
            string.Create(CultureInfo.InvariantCulture, $"Random ({100.0 * randomMasks.Average(m => m.Count(x => x)) / patches:0}%)"),
            string.Create(CultureInfo.InvariantCulture, $"Block-wise ({100.0 * blockMasks.Average(m => m.Count(x => x)) / patches:0}%)"),
        ];

        var scale = PictureKit.TileScale(tileSize, height, width);
        return DrawGrid(path, title, headers, rowLabels, count, width * scale, height * scale, (canvas, row, column, target) =>
        {
            DrawImage(canvas, images[row], channels, height, width, target);
            if (column > 0)
            {
                PictureKit.DrawMask(canvas, column == 1 ? randomMasks[row] : blockMasks[row], gridHeight, gridWidth, target);
            }
        });
    }

    /// <summary>
    /// Draws three line charts against the training step from the reports of a run (what
    /// <see cref="BootMaePretrainerSettings"/>'s or the ML.NET Options' <c>MetricsCallback</c> received): the losses (total,
    /// pixel, feature), the learning rate and the EMA momentum. See <see cref="TrainingCurves(IReadOnlyList{TrainingCurvePoint}, string, string?)"/>
    /// for the picture.
    /// </summary>
    /// <param name="reports">The reports in the order received; validation reports are left out. A report holds the means
    /// since its epoch began, so each point is the mean over the steps since the previous report of its epoch (the curve
    /// does not jump at epoch starts); a run without step reports gives one point per epoch.</param>
    /// <param name="path">PNG file to write; its folder is created if missing.</param>
    /// <param name="title">Optional title above the charts.</param>
    /// <returns>The full path of the PNG written.</returns>
    /// <exception cref="ArgumentException"><paramref name="reports"/> holds no training report, or <paramref name="path"/> is blank.</exception>
    public static string TrainingCurves(IEnumerable<BootMaeTrainingMetrics> reports, string path, string? title = null)
    {
        ArgumentNullException.ThrowIfNull(reports);
        var points = TrainingCurvePoint.FromReports(reports);
        if (points.Count == 0)
        {
            throw new ArgumentException("reports must hold at least one training (not validation) report.", nameof(reports));
        }

        return TrainingCurves(points, path, title);
    }

    /// <summary>
    /// Draws three line charts against the training step: the losses (total, pixel, feature), the learning rate and
    /// the EMA momentum, each with axes, ticks, labels and, for the losses, a legend. The charts are drawn with OxyPlot
    /// (OxyPlot.SkiaSharp); for other charts of the same metrics, see <see cref="BootMaeTensorBoard"/>.
    /// </summary>
    /// <param name="points">Logged steps, in any order; NaN values are left out of their curve.</param>
    /// <param name="path">PNG file to write; its folder is created if missing.</param>
    /// <param name="title">Optional title above the charts.</param>
    /// <returns>The full path of the PNG written.</returns>
    /// <exception cref="ArgumentException"><paramref name="points"/> is null or empty, or <paramref name="path"/> is blank.</exception>
    public static string TrainingCurves(IReadOnlyList<TrainingCurvePoint> points, string path, string? title = null)
    {
        if (points is null)
        {
            throw new ArgumentNullException(nameof(points));
        }

        if (points.Count == 0 || points.Any(p => p is null))
        {
            throw new ArgumentException("points must hold at least one training step and no null entries.", nameof(points));
        }

        PictureKit.CheckPath(path, nameof(path));
        var sorted = points.OrderBy(p => p.Step).ToArray();
        LineChart.Panel Panel(string panelTitle, string yLabel, params (string Name, SKColor Color, Func<TrainingCurvePoint, double> Value)[] curves)
            => new(panelTitle, yLabel, curves.Select(c => new LineChart.Curve(c.Name, c.Color, sorted.Select(c.Value).ToArray())).ToArray());

        var panels = new[]
        {
            Panel("Loss", "loss",
                ("total", new SKColor(0x22, 0x22, 0x22), p => p.TotalLoss),
                ("pixel", new SKColor(0x1F, 0x77, 0xB4), p => p.PixelLoss),
                ("feature", new SKColor(0xFF, 0x7F, 0x0E), p => p.FeatureLoss)) with { Legend = true },
            Panel("Learning rate", "learning rate", ("lr", new SKColor(0x2C, 0xA0, 0x2C), p => p.LearningRate)),
            Panel("EMA momentum", "momentum", ("ema", new SKColor(0x94, 0x67, 0xBD), p => p.EmaMomentum)),
        };
        return LineChart.SaveRow(sorted.Select(p => (double)p.Step).ToArray(), "step", panels, path, title);
    }

    private static void CheckRowLabels(IReadOnlyList<string>? rowLabels, int count)
    {
        if (rowLabels is not null && rowLabels.Count != count)
        {
            throw new ArgumentException($"rowLabels holds {rowLabels.Count} labels but there are {count} images; give one per image.", nameof(rowLabels));
        }
    }

    private static void DrawImage(SKCanvas canvas, float[] chw, int channels, int height, int width, SKRect target)
    {
        using var bitmap = PictureKit.ToBitmap(chw, channels, height, width);
        PictureKit.DrawTile(canvas, bitmap, target);
    }

    /// <summary>The reconstruction inside masked patches and the original elsewhere, as MAE figures show it.</summary>
    private static float[] Paste(float[] original, float[] reconstruction, bool[] mask, int channels, int height, int width, int patchSize)
    {
        var result = (float[])original.Clone();
        var gridWidth = width / patchSize;
        for (var c = 0; c < channels; c++)
        {
            for (var y = 0; y < height; y++)
            {
                for (var x = 0; x < width; x++)
                {
                    if (mask[((y / patchSize) * gridWidth) + (x / patchSize)])
                    {
                        var i = (((c * height) + y) * width) + x;
                        result[i] = reconstruction[i];
                    }
                }
            }
        }

        return result;
    }

    /// <summary>Lays out titled columns of equally sized tiles, one row per image, and saves the picture.</summary>
    private static string DrawGrid(
        string path,
        string? title,
        string[] headers,
        IReadOnlyList<string>? rowLabels,
        int rows,
        float tileWidth,
        float tileHeight,
        Action<SKCanvas, int, int, SKRect> drawTile)
    {
        using var headerPaint = PictureKit.TextPaint(HeaderSize, bold: true);
        using var labelPaint = PictureKit.TextPaint(HeaderSize - 1);
        using var titlePaint = PictureKit.TextPaint(PictureKit.TitleSize, bold: true);

        // Columns widen to fit their header, so long titles never run into the next column.
        var columnWidth = Math.Max(tileWidth, headers.Max(h => headerPaint.MeasureText(h)) + 8);
        var labelWidth = rowLabels is null ? 0 : rowLabels.Max(l => labelPaint.MeasureText(l ?? string.Empty)) + PictureKit.Gap;
        var gridWidth = labelWidth + (headers.Length * columnWidth) + ((headers.Length - 1) * PictureKit.Gap);
        var titleWidth = title is null ? 0 : titlePaint.MeasureText(title);
        var width = (PictureKit.Margin * 2) + Math.Max(gridWidth, titleWidth);
        var titleHeight = title is null ? 0 : PictureKit.TitleSize + 14;
        var headerHeight = HeaderSize + 10;
        var height = (PictureKit.Margin * 2) + titleHeight + headerHeight + (rows * tileHeight) + ((rows - 1) * PictureKit.Gap);

        using var surface = SKSurface.Create(new SKImageInfo((int)Math.Ceiling(width), (int)Math.Ceiling(height)));
        var canvas = surface.Canvas;
        canvas.Clear(PictureKit.Background);
        var left = PictureKit.Margin + ((width - (PictureKit.Margin * 2) - gridWidth) / 2);
        if (title is not null)
        {
            PictureKit.DrawCentered(canvas, title, width / 2, PictureKit.Margin + PictureKit.TitleSize, titlePaint);
        }

        var top = PictureKit.Margin + titleHeight;
        for (var column = 0; column < headers.Length; column++)
        {
            var centerX = left + labelWidth + (column * (columnWidth + PictureKit.Gap)) + (columnWidth / 2);
            PictureKit.DrawCentered(canvas, headers[column], centerX, top + HeaderSize, headerPaint);
        }

        top += headerHeight;
        for (var row = 0; row < rows; row++)
        {
            var y = top + (row * (tileHeight + PictureKit.Gap));
            if (rowLabels is not null)
            {
                var label = rowLabels[row] ?? string.Empty;
                canvas.DrawText(label, left + labelWidth - PictureKit.Gap - labelPaint.MeasureText(label), y + (tileHeight / 2) + (HeaderSize / 3), labelPaint);
            }

            for (var column = 0; column < headers.Length; column++)
            {
                var x = left + labelWidth + (column * (columnWidth + PictureKit.Gap)) + ((columnWidth - tileWidth) / 2);
                var target = SKRect.Create(x, y, tileWidth, tileHeight);
                drawTile(canvas, row, column, target);
                PictureKit.DrawFrame(canvas, target);
            }
        }

        return PictureKit.Save(surface, path);
    }
}
