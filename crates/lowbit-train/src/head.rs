//! The settings of embedding training's margin head and the head a [`crate::Model`] carries
//! while it trains (see [`crate::embed`] for the losses). Apart from `embed` so that the model
//! can hold a head without importing the training code.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MarginKind {
    CosFace,
    ArcFace,
}

impl MarginKind {
    pub fn parse(s: &str) -> Option<MarginKind> {
        match s.to_ascii_lowercase().as_str() {
            "cosface" => Some(MarginKind::CosFace),
            "arcface" => Some(MarginKind::ArcFace),
            _ => None,
        }
    }
    /// The usual margin: 0.35 (CosFace), 0.5 rad (ArcFace).
    pub fn default_margin(self) -> f32 {
        match self {
            MarginKind::CosFace => 0.35,
            MarginKind::ArcFace => 0.5,
        }
    }
}

/// The margin-softmax head's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmbedConfig {
    pub kind: MarginKind,
    pub margin: f32,
    pub scale: f32,
    /// Training identities.
    pub classes: usize,
    /// Embedding width.
    pub dim: usize,
    /// RCM weight λ; `None` for the plain margin loss.
    pub rcm: Option<f32>,
}

/// The head attached to a [`Model`] while it trains.
#[derive(Clone, Debug)]
pub struct Head {
    pub cfg: EmbedConfig,
    /// Parameter index of the `[classes, dim]` weight (row `y`: identity `y`'s centre).
    pub param: usize,
    /// Float class centres `c_y` (row-major `[classes, dim]`, unit rows) for RCM.
    pub centres: Option<Vec<f32>>,
}
