namespace Microsoft.ML.BootMae.Tests.DocSnippets;

// Code shown in docs/scale-out.md (DocSnippetTests keeps it equal to the doc). Compiled only: ViT-B runs are too large for
// the tests; OfficialCheckpointTests covers the same calls on a tiny model.
public static class ScaleOutSnippets
{
    public static (string Pth, string Safetensors) Export(IImageBatchSource source, string checkpoints)
    {
        #region snippet:scaleout-export
        var settings = new BootMaePretrainerSettings { MaxEpochs = 20, CheckpointDirectory = checkpoints };
        using (new BootMaePretrainer(BootMaeArchitecture.VitBase16, settings).Train(source))
        {
        }

        // The newest valid checkpoint in the folder (or pass one step-… folder). Writes handover.pth and handover.safetensors.
        var (pth, safetensors) = BootMaePretrainer.ExportOfficialCheckpoint(checkpoints, "handover.pth", Console.WriteLine);
        #endregion
        return (pth, safetensors);
    }

    public static BootMaeEncoder Import(IImageBatchSource source)
    {
        #region snippet:scaleout-import
        var settings = new BootMaePretrainerSettings
        {
            MaxEpochs = 900,                                // the official run finished epoch 799: this one continues at epoch 800
            InitialState = "OUTPUT/BootMAE/pretrain/handover/checkpoint-799.pth",
            CheckpointDirectory = "checkpoints-after-handover",
        };
        using var encoder = new BootMaePretrainer(BootMaeArchitecture.VitBase16, settings).Train(source, log: Console.WriteLine);
        #endregion
        return encoder.Clone();
    }
}
