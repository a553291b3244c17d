namespace Microsoft.ML.BootMae.Visualization;

/// <summary>
/// How <see cref="BootMaePictures.ReconstructionGrid(IReadOnlyList{float[]}, IReadOnlyList{bool[]}, IReadOnlyList{float[]}, BootMaeArchitecture, string, BootMaePictureOptions?)"/>
/// and <see cref="BootMaePictures.MaskComparison(IReadOnlyList{float[]}, IReadOnlyList{bool[]}, IReadOnlyList{bool[]}, BootMaeArchitecture, string, BootMaePictureOptions?)"/>
/// lay out their grid. Every member is optional.
/// </summary>
public sealed record BootMaePictureOptions
{
    /// <summary>Title above the grid; <c>null</c> for none.</summary>
    public string? Title { get; init; }

    /// <summary>One label per row (e.g. class names), drawn left of each row; <c>null</c> for none.</summary>
    public IReadOnlyList<string>? RowLabels { get; init; }

    /// <summary>Side in pixels of the longest image edge on screen; <c>null</c> zooms small images by an integer factor to at least 112 px.</summary>
    public int? TileSize { get; init; }
}
