namespace Microsoft.ML.BootMae;

/// <summary>Thrown when training cannot go on (for example the loss became NaN); the message says where the last good checkpoint is.</summary>
public sealed class BootMaeTrainingException : Exception
{
    /// <summary>Creates the exception.</summary>
    /// <param name="message">What happened and what to do.</param>
    /// <param name="innerException">The cause, if any.</param>
    public BootMaeTrainingException(string message, Exception? innerException = null)
        : base(message, innerException)
    {
    }
}
