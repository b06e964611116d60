//! Texu's board agent: turns a board's assigned containers into running LXC containers.
