using Microsoft.ML.BootMae.Interop;
using Microsoft.ML.BootMae.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Training;

/// <summary>
/// The <c>BOOTMAEC</c> classifier file: the 8 bytes <c>BOOTMAEC</c>, a little-endian int32 header length, a UTF-8 JSON
/// header (format, version, architecture, class count, head kind, source block, payload length and SHA-256), then the
/// whole classifier's state_dict as a safetensors payload (keys <c>encoder.*</c> and <c>classifier.*</c>).
/// </summary>
internal static class ClassifierFile
{
    private const string FormatName = "bootmae-classifier";
    private const int FormatVersion = 1;
    private const string FineTuneKind = "FineTune";
    private const string LinearProbeKind = "LinearProbe";
    private static readonly byte[] Magic = "BOOTMAEC"u8.ToArray();

    /// <summary>Writes <paramref name="model"/> (header and weights) and leaves the stream open.</summary>
    public static void Write(Stream stream, ImageClassifier model)
    {
        using var scope = NewDisposeScope();
        var (payload, length, sha256) = WeightsContainer.Serialize(model.state_dict());
        WeightsContainer.Write(stream, Magic, new ClassifierHeader(FormatName, FormatVersion, model.Encoder.Architecture, model.NumberOfClasses,
            model.IsLinearProbe ? LinearProbeKind : FineTuneKind, model.SourceBlock, length, sha256), payload);
    }

    /// <summary>Reads a classifier written by <see cref="Write"/> (exactly its bytes; the stream stays open) onto the CPU.</summary>
    /// <exception cref="InvalidDataException">Not a classifier, damaged, or saved for another architecture or class count.</exception>
    public static ImageClassifier Read(Stream stream, BootMaeArchitecture expectedArchitecture, int expectedNumClasses)
    {
        var header = WeightsContainer.ReadHeader<ClassifierHeader>(stream, Magic, "classifier",
            "The model file is damaged or is not a BootMaeImageClassification model.");
        if (header.Format != FormatName || header.Version != FormatVersion)
        {
            throw new InvalidDataException($"Unsupported classifier format '{header.Format}' version {header.Version}; this package reads '{FormatName}' version {FormatVersion}.");
        }

        BootMaeEncoder.ValidateHeaderArchitecture(header.Architecture, "classifier");
        if (header.Architecture != expectedArchitecture)
        {
            throw new InvalidDataException($"The classifier was saved for architecture {header.Architecture} but {expectedArchitecture} was expected.");
        }

        if (header.NumberOfClasses != expectedNumClasses)
        {
            throw new InvalidDataException($"The classifier was saved with {header.NumberOfClasses} classes but {expectedNumClasses} were expected.");
        }

        if (header.HeadKind is not (FineTuneKind or LinearProbeKind) || header.SourceBlock < 0 || header.SourceBlock >= header.Architecture.Depth)
        {
            throw new InvalidDataException($"The classifier header has an invalid head kind '{header.HeadKind}' or source block {header.SourceBlock}.");
        }

        if (header.NumberOfClasses < 2)
        {
            throw new InvalidDataException($"The classifier header's field 'NumberOfClasses' is {header.NumberOfClasses}; at least 2 are needed.");
        }

        // Encoder plus the head's weight matrix: a lower bound of the state_dict, so a crafted size fails before allocating.
        WeightsContainer.CheckPayloadHolds(header.PayloadLength,
            VisionTransformerEncoder.StateElementCount(header.Architecture) + ((double)header.Architecture.EmbedDim * header.NumberOfClasses),
            "classifier", $"{BootMaeEncoder.Describe(header.Architecture)}, NumberOfClasses {header.NumberOfClasses}");
        var weights = WeightsContainer.ReadWeights(stream, header.PayloadLength, header.PayloadSha256 ?? string.Empty, "classifier");
        var model = new ImageClassifier(new VisionTransformerEncoder(header.Architecture), header.NumberOfClasses, header.HeadKind == LinearProbeKind, header.SourceBlock);
        try
        {
            ImageClassifierEngine.CopyState(model, weights, "the classifier file");
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
        finally
        {
            foreach (var t in weights.Values)
            {
                t.Dispose();
            }
        }
    }

    private sealed record ClassifierHeader(string Format, int Version, BootMaeArchitecture Architecture, int NumberOfClasses,
        string HeadKind, int SourceBlock, long PayloadLength, string PayloadSha256);
}
